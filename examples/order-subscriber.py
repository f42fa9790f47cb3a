"""A Dapr-style subscriber in plain Python: no SDK, just HTTP.

It listens on $APP_PORT; the sidecar asks ``GET /dapr/subscribe`` which topics it wants and then
POSTs each event (a CloudEvent) to the route.  With ``ORDERS_EXPECTED=N`` it exits once it has seen
N distinct orders (deliveries are at-least-once, so a repeated order id is acknowledged again but
counted once).

    omnibus run --app-id order-subscriber --app-port 0 -- python examples/order-subscriber.py
"""

from __future__ import annotations

import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PUBSUB = os.environ.get("PUBSUB_NAME", "pubsub")
TOPIC = os.environ.get("TOPIC", "orders")
EXPECTED = int(os.environ.get("ORDERS_EXPECTED", "0"))  # 0: run until stopped

seen: set[object] = set()
lock = threading.Lock()


def say(line: str) -> None:
    sys.stdout.write(line + "\n")  # one write per line: threads never interleave inside one
    sys.stdout.flush()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/dapr/subscribe":
            self.reply(200, [{"pubsubname": PUBSUB, "topic": TOPIC, "route": "/orders"}])
        else:
            self.reply(404, {"error": "not found"})

    def do_POST(self) -> None:
        if self.path != "/orders":
            self.reply(404, {"error": "not found"})
            return
        event = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        order = event.get("data")
        order_id = order.get("orderId") if isinstance(order, dict) else order
        with lock:  # requests arrive on several threads at once
            first = order_id not in seen
            seen.add(order_id)
            note = "" if first else " (again: at-least-once delivery)"
            say(f"received order {order_id}: {json.dumps(order)}{note}")
            done = first and EXPECTED > 0 and len(seen) >= EXPECTED
        self.reply(200, {"status": "SUCCESS"})
        if done:
            say(f"all {EXPECTED} orders received, exiting")
            threading.Thread(target=self.server.shutdown).start()

    def reply(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per order is enough


def main() -> int:
    port = int(os.environ.get("APP_PORT", "0") or 0)
    if not port:
        print("APP_PORT is not set: run me with omnibus run --app-port ...", file=sys.stderr)
        return 2
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    say(f"order-subscriber listening on {port}, subscribing to {PUBSUB}/{TOPIC}")
    with server:
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
