"""A Dapr-style subscriber app for end-to-end tests: plain http.server, no SDK.

    python tests/apps/subscriber.py --port P --record FILE [--subscriptions JSON] [--script JSON]

``--subscriptions`` is what ``GET /dapr/subscribe`` returns (absent: 404, no programmatic
subscriptions).  ``--script`` maps a route to its behaviour:

- ``SUCCESS`` (default): 200 with an empty body;
- ``RETRY`` / ``DROP``: 200 with that status; ``RETRY<n>``: RETRY the first n deliveries of each
  event id, then SUCCESS;
- ``404`` / ``500``: that status; ``SLOW<ms>``: wait that long, then SUCCESS;
- ``BULK``: a bulk delivery, every entry SUCCESS; ``BULKDROP<k>``: entries whose event data has
  ``n == k`` are DROPped, the rest SUCCESS.

Every request to a route is appended to ``--record`` as one JSON line ``{path, headers, body}``
(before answering), so a test can read what the app received and in which order.
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
    """Answers per the script and records every POST."""

    protocol_version = "HTTP/1.1"
    subscriptions: str | None = None
    script: dict[str, str] = {}
    record: int = -1  # an O_APPEND file descriptor
    lock = threading.Lock()
    attempts: Counter[str] = Counter()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self, status: int, body: bytes = b"") -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/dapr/subscribe" and self.subscriptions is not None:
            self._answer(200, self.subscriptions.encode())
        elif self.path == "/healthz":
            self._answer(200)
        else:
            self._answer(404)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw.decode("utf-8", "replace")
        behaviour = self.script.get(self.path, "SUCCESS")
        with self.lock:
            line = {"path": self.path, "headers": dict(self.headers), "body": body}
            # One write(2) per line on an O_APPEND descriptor: a reader never sees half a
            # line from a buffered writer flushing in chunks.
            os.write(self.record, (json.dumps(line) + "\n").encode())
            key = f"{self.path} {body.get('id') if isinstance(body, dict) else raw!r}"
            self.attempts[key] += 1
            count = self.attempts[key]
        self._behave(behaviour, body, count)

    def _behave(self, behaviour: str, body: Any, count: int) -> None:
        if behaviour in ("404", "500"):
            self._answer(int(behaviour))
        elif behaviour in ("RETRY", "DROP"):
            self._answer(200, json.dumps({"status": behaviour}).encode())
        elif behaviour.startswith("RETRY"):
            status = "RETRY" if count <= int(behaviour[5:]) else "SUCCESS"
            self._answer(200, json.dumps({"status": status}).encode())
        elif behaviour.startswith("SLOW"):
            time.sleep(int(behaviour[4:]) / 1000)
            self._answer(200)
        elif behaviour.startswith("BULK"):
            drop = int(behaviour[8:]) if behaviour.startswith("BULKDROP") else None
            statuses = [
                {"entryId": entry["entryId"], "status": "DROP" if _n(entry) == drop else "SUCCESS"}
                for entry in body["entries"]
            ]
            self._answer(200, json.dumps({"statuses": statuses}).encode())
        else:
            self._answer(200)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--record", required=True)
    parser.add_argument("--subscriptions", default=None)
    parser.add_argument("--script", default="{}")
    args = parser.parse_args()
    Handler.subscriptions = args.subscriptions
    Handler.script = json.loads(args.script)
    Handler.record = os.open(args.record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    server.serve_forever()


def _n(entry: dict[str, Any]) -> object:
    data = entry.get("event", {}).get("data")
    return data.get("n") if isinstance(data, dict) else None


if __name__ == "__main__":
    main()
