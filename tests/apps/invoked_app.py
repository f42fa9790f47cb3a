"""An app whose methods are invoked, for end-to-end tests: plain http.server, no SDK.

    python tests/apps/invoked_app.py --port P --record FILE [--script JSON]

Every request (any verb) is appended to ``--record`` as one JSON line ``{path, method, headers,
body, time}`` before it is answered (``time``: seconds since the epoch).  ``--script`` maps a path
(query left out) to its behaviour:

- ``OK`` (default): 200 with ``{"id": <dapr-invocation-id>, "seen": n, "body": <text>}``, where
  n counts the requests to that path with that invocation id;
- ``FAIL<k>``: 503 for the first k requests with the same invocation id, then as ``OK``;
- ``SLOW<ms>``: wait that long, then as ``OK``.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Handler(BaseHTTPRequestHandler):
    """Answers per the script and records every request."""

    protocol_version = "HTTP/1.1"
    script: dict[str, str] = {}
    record: int = -1
    lock = threading.Lock()
    seen: Counter[str] = Counter()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8", "replace")
        path = self.path.partition("?")[0]
        iid = self.headers.get("dapr-invocation-id", "")
        with self.lock:
            line = {
                "path": path,
                "method": self.command,
                "headers": dict(self.headers),
                "body": body,
                "time": time.time(),
            }
            os.write(self.record, (json.dumps(line) + "\n").encode())
            self.seen[f"{path} {iid}"] += 1
            count = self.seen[f"{path} {iid}"]
        behaviour = self.script.get(path, "OK")
        if behaviour.startswith("FAIL") and count <= int(behaviour[4:]):
            self._answer(503, {"error": "busy", "seen": count})
            return
        if behaviour.startswith("SLOW"):
            time.sleep(int(behaviour[4:]) / 1000)
        self._answer(200, {"id": iid, "seen": count, "body": body})

    def _answer(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-App", "invoked")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = _handle


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--record", required=True)
    parser.add_argument("--script", default="{}")
    args = parser.parse_args()
    Handler.script = json.loads(args.script)
    Handler.record = os.open(args.record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
