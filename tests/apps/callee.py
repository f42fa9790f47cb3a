"""A Dapr-style app that is invoked, for end-to-end tests: plain http.server, no SDK.

    python tests/apps/callee.py --port P [--name NAME]

Every verb on every path; what it answers depends on the path:

- ``/status/<n>``: status n, body ``as you wish``;
- ``/echo/...``: 200, the request body as the body, and a JSON summary of the request in the
  ``X-Request`` header (verb, path with query, every header as a pair);
- ``/inspect/...``: 200, that JSON summary as the body (plus the body's length and sha256);
- ``/cookies``: 200 with two ``Set-Cookie`` headers;
- ``/slow/<ms>``: waits that long, then 200;
- ``/flaky/<n>/<key>``: 503 for the first n requests with that key, then 200 with the count.

Every answer carries ``X-Instance: NAME`` so a test can tell replicas apart.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Handler(BaseHTTPRequestHandler):
    """Answers per the path (see the module docstring)."""

    protocol_version = "HTTP/1.1"
    name = "callee"
    lock = threading.Lock()
    seen: Counter[str] = Counter()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _summary(self, body: bytes) -> dict[str, Any]:
        return {
            "verb": self.command,
            "path": self.path,
            "headers": [[k, v] for k, v in self.headers.items()],
            "length": len(body),
            "sha256": hashlib.sha256(body).hexdigest(),
        }

    def _answer(self, status: int, body: bytes, headers: list[tuple[str, str]]) -> None:
        self.send_response(status)
        for name, value in [*headers, ("X-Instance", self.name)]:
            self.send_header(name, value)
        if status not in (204, 304):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and status not in (204, 304):
            self.wfile.write(body)

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path = self.path.split("?")[0]
        if path.startswith("/status/"):
            status = int(path.removeprefix("/status/"))
            self._answer(status, b"as you wish", [("Content-Type", "text/plain")])
        elif path.startswith("/echo"):
            summary = json.dumps(self._summary(body))
            self._answer(
                200, body, [("Content-Type", "application/octet-stream"), ("X-Request", summary)]
            )
        elif path.startswith("/inspect"):
            summary = json.dumps(self._summary(body)).encode()
            self._answer(200, summary, [("Content-Type", "application/json")])
        elif path == "/cookies":
            self._answer(200, b"", [("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")])
        elif path.startswith("/flaky/"):
            failures, _, key = path.removeprefix("/flaky/").partition("/")
            with self.lock:
                self.seen[key] += 1
                count = self.seen[key]
            status = 503 if count <= int(failures) else 200
            self._answer(status, str(count).encode(), [("Content-Type", "text/plain")])
        elif path.startswith("/slow/"):
            time.sleep(int(path.removeprefix("/slow/")) / 1000)
            self._answer(200, b"slept", [("Content-Type", "text/plain")])
        else:
            self._answer(404, b"no such route", [("Content-Type", "text/plain")])

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _handle


def main() -> None:
    """Serve until killed."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="callee")
    args = parser.parse_args()
    Handler.name = args.name
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    server.request_queue_size = 256
    server.serve_forever()


if __name__ == "__main__":
    main()
