"""A seeded random-request fuzzer against a real, running sidecar process.

    python -m tests.fuzz_sidecar --requests 10000 [--seed 1] [--json FILE]

starts a sidecar (``python -m runtime.sidecar``, pub/sub and state on SQLite files, a 64 KiB body
limit) and the callee app (tests/apps/callee.py) in a temporary directory, sends the requests one
after the other on a kept-alive connection, and prints the figures.  tests/test_fuzz.py runs a few
hundred in the suite.

Requests: every path of runtime/api/openapi.json (except ``POST /v1.0/shutdown``) and unknown
ones, documented verbs mostly and any verb otherwise; path parameters that name real components
or garbage (percent-encoded bytes, ``..``, ``%2F``, invalid UTF-8); ``metadata.*`` and other query
parameters; random headers (content types, trace context, ``Prefer: respond-async``,
``dapr-app-id``, idempotency keys, etags); bodies that are JSON of the shape the route reads,
random JSON, broken JSON, nesting thousands deep, binary, empty, over the body limit (with and
without ``Content-Length``).

Judged, per request: the connection must answer (no reset, no time-out); a 5xx must carry Dapr's
error body unless the callee app answered it (its answers carry ``X-Instance``, passed through
verbatim) or it answers a HEAD (no body, by HTTP's rules); the sidecar's log must gain no
``Traceback``.  At the end the sidecar must be healthy.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import random
import socket
import string
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

APP_ID = "fuzz"
VERBS = ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS")
MAX_BODY = 64 * 1024
DOCUMENT = Path(__file__).resolve().parents[1] / "runtime" / "api" / "openapi.json"
_SKIPPED = {("/v1.0/shutdown", "POST")}  # it would end the run
_PRINTABLE = string.ascii_letters + string.digits + string.punctuation + " "


@dataclass(frozen=True)
class Request:
    """One request of the run."""

    route: str  # the path template it was made from, for the figures
    method: str
    target: str  # path and query, percent-encoded
    headers: tuple[tuple[str, str], ...]
    body: bytes
    chunked: bool = False

    def describe(self) -> dict[str, Any]:
        """The request as a finding shows it."""
        return {
            "method": self.method,
            "target": self.target[:300],
            "headers": [list(h) for h in self.headers],
            "body": repr(self.body[:200])
            + (f" (+{len(self.body) - 200} bytes)" * (len(self.body) > 200)),
            "chunked": self.chunked,
        }


@dataclass
class Report:
    """What the run saw."""

    sent: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    routes: Counter[str] = field(default_factory=Counter)
    findings: list[dict[str, Any]] = field(default_factory=list)
    non_dapr_4xx: int = 0  # 4xx without Dapr's body (router 404/405, 401, HEAD): counted only
    seconds: float = 0.0
    healthy_at_end: bool = False

    @property
    def ok(self) -> bool:
        """No finding and healthy at the end."""
        return not self.findings and self.healthy_at_end

    def summary(self) -> dict[str, Any]:
        """The figures, as printed."""
        kinds = Counter(f["kind"] for f in self.findings)
        return {
            "requests": self.sent,
            "seconds": round(self.seconds, 1),
            "per_second": round(self.sent / self.seconds, 1) if self.seconds else 0,
            "statuses": dict(sorted(self.statuses.items())),
            "routes": dict(sorted(self.routes.items())),
            "findings": dict(kinds),
            "4xx_without_dapr_body": self.non_dapr_4xx,
            "healthy_at_end": self.healthy_at_end,
        }


class Generator:
    """Random requests, all drawn from one seeded ``random.Random``."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        paths: dict[str, dict[str, Any]] = json.loads(DOCUMENT.read_text())["paths"]
        self.routes = [
            (p, [v.upper() for v in item if v.upper() in VERBS]) for p, item in paths.items()
        ]

    def request(self) -> Request:
        """The next request."""
        rng = self.rng
        if rng.random() < 0.08:
            route, documented = "/{unknown}", ["GET"]
        else:
            route, documented = rng.choice(self.routes)
        method = rng.choice(documented) if documented and rng.random() < 0.75 else rng.choice(VERBS)
        if (route, method) in _SKIPPED:
            method = "GET"
        path = self.path(route)
        headers = self.headers(route)
        if route == "/{unknown}" and rng.random() < 0.5:
            headers.append(("dapr-app-id", rng.choice([APP_ID, "nobody", self.text(8)])))
        body, chunked = self.body(route, method)
        return Request(route, method, path + self.query(), tuple(headers), body, chunked)

    def text(self, size: int, alphabet: str = _PRINTABLE) -> str:
        """Up to ``size`` random characters."""
        return "".join(self.rng.choice(alphabet) for _ in range(self.rng.randint(0, size)))

    def name(self, real: list[str]) -> str:
        """A path segment: a real name mostly, else garbage, percent-encoded."""
        rng = self.rng
        roll = rng.random()
        if roll < 0.6:
            return quote(rng.choice(real), safe="")
        if roll < 0.7:
            return rng.choice(
                ["..", ".", "%2F", "%2e%2e", "%ff%fe", "%zz", "a%00b", "%0A", "x" * 3000]
            )
        if roll < 0.85:
            return quote(self.text(12), safe="") or "x"
        unicode = "".join(chr(rng.randint(0x80, 0x2FFFF)) for _ in range(rng.randint(1, 6)))
        return quote(unicode.encode("utf-8", "surrogatepass"), safe="")

    def path(self, template: str) -> str:
        """``template`` with every parameter filled in."""
        pools = {
            "pubsubname": ["pubsub", "nope"],
            "topic": ["orders", "a/b", "orders.deadletter"],
            "storename": ["statestore", "nope"],
            "key": ["k1", "k2", "a/b", "a||b"],
            "appId": [APP_ID, "callee", "nobody"],
            "method": [
                "echo/x",
                "status/404",
                "status/500",
                "status/201",
                "inspect",
                "slow/5",
                "cookies",
            ],
            "id": ["0" * 32, "abc", "-"],
        }
        if template == "/{unknown}":
            return "/" + "/".join(
                self.name(["v1.0", "dapr", "state", "x"]) for _ in range(self.rng.randint(1, 4))
            )
        parts = template.split("/")
        filled = [self.name(pools.get(p[1:-1], ["x"])) if p.startswith("{") else p for p in parts]
        return "/".join(filled)

    def query(self) -> str:
        """A query string: ``metadata.*`` and the parameters routes read, or nothing."""
        rng = self.rng
        if rng.random() < 0.4:
            return ""
        keys = [
            "metadata.ttlInSeconds",
            "metadata.rawPayload",
            "metadata.cloudevent.id",
            "metadata.cloudevent.type",
            "metadata.cloudevent.traceparent",
            "metadata.routingKey",
            "metadata.Content-Length",
            "metadata.Transfer-Encoding",
            "metadata.Host",
            "metadata.contentType",
            "metadata.partitionKey",
            "consistency",
            "concurrency",
            "appid",
            "status",
            "metadata." + self.text(6),
        ]
        values = [
            "",
            "0",
            "-1",
            "1",
            "true",
            "no",
            "10",
            "99999999999999",
            "strong",
            "first-write",
            APP_ID,
        ]
        pairs = []
        for _ in range(rng.randint(1, 4)):
            value = rng.choice(values) if rng.random() < 0.7 else self.text(10)
            pairs.append(f"{quote(rng.choice(keys), safe='.')}={quote(value, safe='')}")
        return "?" + "&".join(pairs)

    def headers(self, route: str) -> list[tuple[str, str]]:
        """Random headers a client of the sidecar might send, or might get wrong."""
        rng = self.rng
        content_types = [
            "application/json",
            "text/plain",
            "application/octet-stream",
            "application/cloudevents+json",
            "application/x-protobuf",
            "Application/JSON; charset=utf-8",
            "multipart/form-data",
            "",
        ]
        headers = [("Content-Type", rng.choice(content_types))] if rng.random() < 0.8 else []
        optional: list[Callable[[], tuple[str, str]]] = [
            lambda: (
                "traceparent",
                rng.choice(["00-" + "a" * 32 + "-" + "b" * 16 + "-01", self.text(20)]),
            ),
            lambda: ("tracestate", self.text(20)),
            lambda: (
                "Prefer",
                rng.choice(["respond-async", "wait=5, Respond-Async", self.text(10)]),
            ),
            lambda: ("Idempotency-Key", rng.choice(["k1", "k2", self.text(80)])),
            lambda: ("dapr-callback", rng.choice(["echo/cb", self.text(10)])),
            lambda: ("If-Match", rng.choice(["1", "abc", self.text(10)])),
            lambda: ("dapr-api-token", self.text(10)),
            lambda: (
                "Authorization",
                "Basic " + base64.b64encode(f"dapr-app-id:{APP_ID}".encode()).decode(),
            ),
            lambda: ("X-Fuzz-" + self.text(6, string.ascii_letters) + "z", self.text(40)),
        ]
        for make in rng.sample(optional, rng.randint(0, 3)):
            headers.append(make())
        return headers

    def body(self, route: str, method: str) -> tuple[bytes, bool]:
        """A body and whether to send it chunked (no Content-Length)."""
        rng = self.rng
        if method in ("GET", "HEAD", "DELETE", "OPTIONS") and rng.random() < 0.8:
            return b"", False
        roll = rng.random()
        if roll < 0.45:
            data = json.dumps(self.shaped(route)).encode()
        elif roll < 0.6:
            data = json.dumps(self.json(3)).encode()
        elif roll < 0.7:
            depth = rng.choice([150, 199, 201, 300, 1100, 5000])
            data = b"[" * depth + (b"]" * depth if rng.random() < 0.7 else b"")
        elif roll < 0.8:
            data = rng.randbytes(rng.randint(0, 200))
        elif roll < 0.88:
            data = rng.choice(
                [b"", b"{", b"[{]", b"null", b'"x"', b"1e999", b'{"a":1,}', b"\xff\xfe"]
            )
        else:
            data = b"x" * rng.choice([MAX_BODY - 10, MAX_BODY + 1, 2 * MAX_BODY])
        return data, rng.random() < 0.15

    def json(self, depth: int) -> Any:
        """A random JSON value."""
        rng = self.rng
        kind = rng.randint(0, 7 if depth > 0 else 4)
        if kind == 0:
            return None
        if kind == 1:
            return rng.choice([True, False])
        if kind == 2:
            return rng.choice([0, -1, 2**63, 2**70, 1.5, -1e300])
        if kind in (3, 4):
            return self.text(12)
        if kind in (5, 6):
            return {self.text(6): self.json(depth - 1) for _ in range(rng.randint(0, 3))}
        return [self.json(depth - 1) for _ in range(rng.randint(0, 3))]

    def shaped(self, route: str) -> Any:
        """JSON of about the shape ``route`` reads, with random holes and wrong types."""
        rng = self.rng
        item = {"key": rng.choice(["k1", "k2", "a||b", "", self.text(8)]), "value": self.json(2)}
        if rng.random() < 0.3:
            item["etag"] = rng.choice(["1", "", self.text(6), 5])
        if rng.random() < 0.3:
            item["options"] = {"concurrency": rng.choice(["first-write", "last-write", "x"])}
        if route.endswith("/bulk") and "state" in route:
            return {
                "keys": [rng.choice(["k1", "k2", self.text(5)]) for _ in range(3)],
                "parallelism": rng.choice([1, 0, -1, "x"]),
            }
        if route.endswith("/transaction"):
            operation = rng.choice(["upsert", "delete", "get", ""])
            return {
                "operations": [{"operation": operation, "request": item}],
                "metadata": rng.choice([None, {}, {"a": "b"}]),
            }
        if route.endswith("/query"):
            return {
                "filter": {rng.choice(["EQ", "IN", "AND", "XX"]): {"value": self.json(1)}},
                "page": {"limit": rng.choice([1, -1, "x"])},
            }
        if "/state/" in route:
            return [item] if rng.random() < 0.8 else item
        if "/bulk/" in route:
            entry = {
                rng.choice(["entryId", "entryID", "id"]): rng.choice(["1", "", 7]),
                "event": self.json(2),
            }
            entry["contentType"] = rng.choice(
                ["application/json", "text/plain", "application/cloudevents+json"]
            )
            return [entry, dict(entry)] if rng.random() < 0.2 else [entry]
        if "/publish/" in route:
            return (
                {"specversion": "1.0", "id": self.text(5), "data": self.json(2)}
                if rng.random() < 0.5
                else self.json(2)
            )
        return self.json(2)


def _send(conn: http.client.HTTPConnection, request: Request) -> tuple[int, dict[str, str], bytes]:
    headers = dict(request.headers)
    if request.chunked:
        size = max(1, len(request.body) // 3)
        chunks = [request.body[i : i + size] for i in range(0, len(request.body), size)]
        conn.request(
            request.method, request.target, body=iter(chunks), headers=headers, encode_chunked=True
        )
    else:
        conn.request(request.method, request.target, body=request.body, headers=headers)
    response = conn.getresponse()
    body = response.read()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, body


def is_dapr_error(body: bytes) -> bool:
    """Dapr's error body: a JSON object with a non-empty errorCode and a message."""
    try:
        value = json.loads(body)
    except ValueError:
        return False
    return (
        isinstance(value, dict)
        and bool(value.get("errorCode"))
        and isinstance(value.get("message"), str)
    )


class Runner:
    """Sends the requests to one sidecar and judges every answer."""

    def __init__(self, port: int, log: Path, report: Report) -> None:
        self.port = port
        self.log = log
        self.report = report
        self.offset = log.stat().st_size if log.exists() else 0
        self.conn = self._connect()

    def _connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)

    def one(self, request: Request) -> None:
        """Send ``request``; record what is wrong with the answer."""
        report = self.report
        report.sent += 1
        report.routes[request.route] += 1
        try:
            status, headers, body = _send(self.conn, request)
        except (OSError, http.client.HTTPException) as exc:
            self._finding("broken connection", request, error=f"{type(exc).__name__}: {exc}")
            self.conn.close()
            self.conn = self._connect()
        else:
            report.statuses[status] += 1
            # The callee's answers pass through verbatim; HEAD answers have no body.
            exempt = "x-instance" in headers or request.method == "HEAD"
            if status >= 500 and not exempt and not is_dapr_error(body):
                self._finding("5xx without a Dapr error body", request, status=status, body=body)
            elif 400 <= status < 500 and not is_dapr_error(body):
                report.non_dapr_4xx += 1
            if headers.get("connection", "").lower() == "close":
                self.conn.close()
                self.conn = self._connect()
        self._check_log(request)

    def _check_log(self, request: Request) -> None:
        with self.log.open("rb") as f:
            f.seek(self.offset)
            added = f.read().decode("utf-8", "replace")
        self.offset += len(added.encode("utf-8", "replace"))
        if "Traceback" in added:
            self._finding("traceback in the sidecar log", request, log=added[-4000:])

    def _finding(self, kind: str, request: Request, **details: Any) -> None:
        if "body" in details:
            details["body"] = repr(details["body"][:300])
        self.report.findings.append({"kind": kind, "request": request.describe(), **details})

    def healthy(self) -> bool:
        """GET /v1.0/healthz answers 204."""
        conn = self._connect()
        try:
            conn.request("GET", "/v1.0/healthz")
            return conn.getresponse().status == 204
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()


def fuzz(port: int, log: Path, *, requests: int, seed: int) -> Report:
    """Send ``requests`` random requests (seeded) to the sidecar on ``port``; the report."""
    report = Report()
    generator = Generator(seed)
    runner = Runner(port, log, report)
    started = time.monotonic()
    for _ in range(requests):
        runner.one(generator.request())
    report.seconds = time.monotonic() - started
    time.sleep(0.2)  # let the last request's log lines land before the final look
    runner._check_log(Request("-", "-", "-", (), b""))
    report.healthy_at_end = runner.healthy()
    runner.conn.close()
    return report


def sidecar_args(callee_port: int) -> list[str]:
    """The sidecar's options for a run: the callee app and a small body limit."""
    return ["--app-port", str(callee_port), "--max-body-size", f"{MAX_BODY // 1024}Ki"]


def resources(directory: Path) -> list[str]:
    """The pub/sub and state components of a run, on SQLite files in ``directory``."""
    from tests.e2e.conftest import component

    return [
        component("pubsub", "pubsub.sqlite", {"connectionString": str(directory / "bus.db")}),
        component("statestore", "state.sqlite", {"connectionString": str(directory / "state.db")}),
    ]


def start_callee(port: int, log: Path) -> subprocess.Popen[bytes]:
    """The callee app (tests/apps/callee.py) on ``port``."""
    script = Path(__file__).resolve().parent / "apps" / "callee.py"
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, str(script), "--port", str(port)], stdout=out, stderr=out
        )


def main(argv: list[str] | None = None) -> int:
    """Start a sidecar and the callee app, fuzz, print the figures; 1 if anything was wrong."""
    from tests.e2e.conftest import Cluster, free_port

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="write the report there")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(Path(tmp), Path(tmp) / "home")
        try:
            callee_port = free_port()
            callee = start_callee(callee_port, Path(tmp) / "callee.log")
            sidecar = cluster.sidecar(
                APP_ID, cluster.resources(*resources(Path(tmp))), args=sidecar_args(callee_port)
            )
            report = fuzz(sidecar.port, sidecar.log, requests=args.requests, seed=args.seed)
        finally:
            cluster.close()
            callee.terminate()
            callee.wait(10)
    summary = {**report.summary(), "seed": args.seed}
    print(json.dumps(summary, indent=2))
    for finding in report.findings[:20]:
        print(json.dumps(finding, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps({**summary, "all_findings": report.findings}, indent=2))
    return 0 if report.ok else 1


if __name__ == "__main__":
    socket.setdefaulttimeout(60)
    sys.exit(main())
