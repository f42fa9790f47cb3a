"""A publisher written for Dapr's HTTP API (as in Dapr's pub/sub quickstart): ``requests`` to
``localhost:$DAPR_HTTP_PORT``, no SDK.

    python tests/apps/order_publisher.py [COUNT]
"""

from __future__ import annotations

import os
import sys

import requests

DAPR_HOST = os.getenv("DAPR_HOST", "http://localhost")
DAPR_HTTP_PORT = os.getenv("DAPR_HTTP_PORT", "3500")
PUBSUB_NAME = "orderpubsub"
TOPIC_NAME = "orders"


def main() -> int:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    base = f"{DAPR_HOST}:{DAPR_HTTP_PORT}"
    for order_id in range(1, count + 1):
        order = {"orderId": order_id}
        reply = requests.post(
            f"{base}/v1.0/publish/{PUBSUB_NAME}/{TOPIC_NAME}", json=order, timeout=10
        )
        if reply.status_code != 204:
            print(f"publishing failed: {reply.status_code} {reply.text}", flush=True)
            return 1
        print(f"Published data: {order}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
