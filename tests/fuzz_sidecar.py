"""A seeded random-request fuzzer against a real, running sidecar process.

    python -m tests.fuzz_sidecar --requests 10000 [--seed 1] [--token T] [--json FILE]

starts a sidecar (``python -m runtime.sidecar``, pub/sub and state on SQLite files, a 64 KiB body
limit, ``DAPR_API_TOKEN`` if ``--token``) and the callee app (tests/apps/callee.py) in a temporary
directory, sends the requests of :mod:`tests.fuzz_requests` one after the other on a kept-alive
connection, and prints the figures.  tests/test_fuzz.py runs a few hundred in the suite.

Judged, per request: the connection must answer (no reset, no time-out); a 4xx or 5xx must carry
Dapr's error body (a 401 is Dapr's text/plain ``invalid api token``) unless the callee app
answered it (its answers carry ``X-Instance``, passed through verbatim) or it answers a HEAD (no
body, by HTTP's rules); the sidecar's log must gain no ``Traceback``.  At the end the sidecar
must be healthy.
"""

from __future__ import annotations

import argparse
import http.client
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.fuzz_requests import APP_ID, MAX_BODY, Generator, Request

__all__ = ["APP_ID", "Report", "fuzz", "resources", "sidecar_args", "start_callee"]


@dataclass
class Report:
    """What the run saw."""

    sent: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    routes: Counter[str] = field(default_factory=Counter)
    findings: list[dict[str, Any]] = field(default_factory=list)
    # 4xx without Dapr's body that Dapr answers so too (401 text/plain): counted, not judged
    non_dapr_4xx: Counter[str] = field(default_factory=Counter)
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
            "4xx_without_dapr_body": dict(self.non_dapr_4xx.most_common(10)),
            "healthy_at_end": self.healthy_at_end,
        }


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
            self._judge(request, status, headers, body)
            if headers.get("connection", "").lower() == "close":
                self.conn.close()
                self.conn = self._connect()
        self._check_log(request)

    def _judge(self, request: Request, status: int, headers: dict[str, str], body: bytes) -> None:
        # The callee's answers pass through verbatim; HEAD answers have no body.
        if status < 400 or "x-instance" in headers or request.method == "HEAD":
            return
        if is_dapr_error(body):
            return
        if status == 401 and body == b"invalid api token":  # Dapr's own, text/plain
            self.report.non_dapr_4xx["401 invalid api token"] += 1
            return
        kind = "5xx" if status >= 500 else "4xx"
        self._finding(f"{kind} without a Dapr error body", request, status=status, body=body)

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


def fuzz(port: int, log: Path, *, requests: int, seed: int, token: str | None = None) -> Report:
    """Send ``requests`` random requests (seeded) to the sidecar on ``port``; the report."""
    report = Report()
    generator = Generator(seed, token)
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
    parser.add_argument("--token", default=None, help="run the sidecar with this DAPR_API_TOKEN")
    parser.add_argument("--json", type=Path, default=None, help="write the report there")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(Path(tmp), Path(tmp) / "home")
        try:
            callee_port = free_port()
            callee = start_callee(callee_port, Path(tmp) / "callee.log")
            env = {"DAPR_API_TOKEN": args.token} if args.token else {}
            files = cluster.resources(*resources(Path(tmp)))
            sidecar = cluster.sidecar(APP_ID, files, args=sidecar_args(callee_port), env=env)
            report = fuzz(
                sidecar.port, sidecar.log, requests=args.requests, seed=args.seed, token=args.token
            )
        finally:
            cluster.close()
            callee.terminate()
            callee.wait(10)
    summary = {**report.summary(), "seed": args.seed, "token": bool(args.token)}
    print(json.dumps(summary, indent=2))
    for finding in report.findings[:20]:
        print(json.dumps(finding, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps({**summary, "all_findings": report.findings}, indent=2))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
