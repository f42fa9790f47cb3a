"""A Dapr-style publisher in plain Python: POSTs orders to the sidecar's publish API.

    omnibus run --app-id order-publisher -- python examples/order-publisher.py

``ORDER_COUNT`` orders (default 10) go to ``POST /v1.0/publish/pubsub/orders`` on
``localhost:$DAPR_HTTP_PORT``; a 204 means the bus holds the order durably.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request

PUBSUB = os.environ.get("PUBSUB_NAME", "pubsub")
TOPIC = os.environ.get("TOPIC", "orders")
ITEMS = ("coffee", "croissant", "bagel", "muffin", "tea")


def publish(port: int, order: dict[str, object]) -> None:
    request = urllib.request.Request(
        f"http://localhost:{port}/v1.0/publish/{PUBSUB}/{TOPIC}",
        data=json.dumps(order).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        if response.status != 204:
            raise RuntimeError(f"unexpected status {response.status}")


def main() -> int:
    port = int(os.environ.get("DAPR_HTTP_PORT", "3500"))
    count = int(os.environ.get("ORDER_COUNT", "10"))
    for number in range(1, count + 1):
        order = {"orderId": number, "item": ITEMS[number % len(ITEMS)], "quantity": number % 3 + 1}
        try:
            publish(port, order)
        except urllib.error.HTTPError as exc:
            print(f"publish failed: {exc.code} {exc.read().decode(errors='replace')}", flush=True)
            return 1
        except OSError as exc:
            print(f"publish failed: {exc}", flush=True)
            return 1
        print(f"published order {number}: {json.dumps(order)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
