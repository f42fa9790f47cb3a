"""A Dapr-style service in plain Python: methods other apps invoke, orders kept in the state store.

    omnibus run --app-id order-service --app-port 0 -- python examples/order-service.py

- ``POST /neworder`` with ``{"data": {"orderId": n}}`` saves the order under the key ``order`` of
  the state store ``statestore`` (``POST /v1.0/state/statestore`` on its own sidecar), as Dapr's
  hello-world does, and answers an empty 200;
- ``GET /order`` answers the last saved order, read back from the state store;
- ``POST /report`` takes a moment and answers a summary: the demo invokes it asynchronously.

No SDK and nothing omnibus-specific: every call is plain HTTP to ``localhost:$DAPR_HTTP_PORT``.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STATE_URL = f"http://localhost:{os.environ.get('DAPR_HTTP_PORT', '3500')}/v1.0/state/statestore"


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def save_order(order: object) -> None:
    body = json.dumps([{"key": "order", "value": order}]).encode()
    request = urllib.request.Request(
        STATE_URL, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10):
        pass


def read_order() -> bytes:
    with urllib.request.urlopen(f"{STATE_URL}/order", timeout=10) as response:
        return bytes(response.read())


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/order":
            self.reply(200, read_order())
        else:
            self.reply(404, b'{"error": "not found"}')

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path == "/neworder":
            order = json.loads(body)["data"]
            save_order(order)
            say(f"saved order {order['orderId']} (invoked by {self.headers['dapr-caller-app-id']})")
            self.reply(200, b"")
        elif self.path == "/report":
            time.sleep(0.5)  # long enough that the caller is glad it did not wait
            say(f"report {self.headers.get('dapr-invocation-id', '')} ready")
            self.reply(200, json.dumps({"lastOrder": json.loads(read_order())}).encode())
        else:
            self.reply(404, b'{"error": "not found"}')

    def reply(self, status: int, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> int:
    port = int(os.environ.get("APP_PORT", "0") or 0)
    if not port:
        print("APP_PORT is not set: run me with omnibus run --app-port ...", file=sys.stderr)
        return 2
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    say(f"order-service listening on {port}")
    with server:
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
