"""The random requests of the sidecar fuzzer (tests/fuzz_sidecar.py), from one seed.

Every path of runtime/api/openapi.json (except ``POST /v1.0/shutdown``) and unknown ones,
documented verbs mostly and any verb otherwise; path parameters that name real components or
garbage (percent-encoded bytes, ``..``, ``%2F``, invalid UTF-8); ``metadata.*`` and other query
parameters; random headers (content types, trace context, ``Prefer: respond-async``,
``dapr-app-id``, idempotency keys, etags, the API token or a wrong one); bodies that are JSON of
the shape the route reads, random JSON, broken JSON, nesting thousands deep, binary, empty, over
the body limit (with and without ``Content-Length``).
"""

from __future__ import annotations

import base64
import json
import random
import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

APP_ID = "fuzz"
VERBS = ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS")
MAX_BODY = 64 * 1024  # the sidecar's --max-body-size in a run
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


class Generator:
    """Random requests, all drawn from one seeded ``random.Random``."""

    def __init__(self, seed: int, token: str | None = None) -> None:
        self.rng = random.Random(seed)
        self.token = token  # the sidecar's DAPR_API_TOKEN: most requests carry it
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
        if (
            self.token
            and rng.random() < 0.85
            and not any(k == "dapr-api-token" for k, _ in headers)
        ):
            headers.append(("dapr-api-token", self.token))
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
