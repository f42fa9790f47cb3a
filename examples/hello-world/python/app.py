"""Dapr's hello-world order generator, as a Dapr user writes it: plain requests to the sidecar."""

import os
import time

import requests

dapr_port = os.getenv("DAPR_HTTP_PORT", 3500)
dapr_url = f"http://localhost:{dapr_port}/v1.0/invoke/nodeapp/method/neworder"

n = 0
while True:
    n += 1
    message = {"data": {"orderId": n}}

    try:
        response = requests.post(dapr_url, json=message, timeout=5)
        if not response.ok:
            print(f"HTTP {response.status_code} => {response.content.decode('utf-8')}", flush=True)
    except Exception as e:
        print(e, flush=True)

    time.sleep(1)
