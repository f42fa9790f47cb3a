"""A Dapr-style client in plain Python: sync and async invocation, and state of its own.

    omnibus run --app-id order-client -- python examples/order-client.py

1. invokes ``order-service/method/neworder`` once per order and waits for each answer (sync);
2. reads the last order back through ``GET order-service/method/order``;
3. invokes ``order-service/method/report`` with ``Prefer: respond-async``: the sidecar answers
   ``202 Accepted`` with a ``Location`` at once, and the client polls it for the result;
4. saves and reads a key of its own state (``statestore``, stored as ``order-client||last-run``).

Exits 0 when every step gave what it should, 1 (with the reason) otherwise.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request

SIDECAR = f"http://localhost:{os.environ.get('DAPR_HTTP_PORT', '3500')}"
SERVICE = "order-service"
COUNT = int(os.environ.get("ORDER_COUNT", "3"))


def call(method: str, path: str, body: object = None, headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        SIDECAR + path,
        data=data,
        headers={"Content-Type": "application/json", **(headers or {})},
        method=method,
    )
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def invoke(method: str, verb: str = "POST", body: object = None, **headers: str):  # type: ignore[no-untyped-def]
    return call(verb, f"/v1.0/invoke/{SERVICE}/method/{method}", body, headers)


def main() -> int:
    for number in range(1, COUNT + 1):
        status, _, text = invoke("neworder", body={"data": {"orderId": number}})
        if status != 200:
            print(f"neworder {number} failed: {status} {text!r}", flush=True)
            return 1
        print(f"invoked neworder {number}: {status}", flush=True)
    status, _, text = invoke("order", verb="GET")
    if status != 200 or json.loads(text) != {"orderId": COUNT}:
        print(f"GET order gave {status} {text!r}", flush=True)
        return 1
    print(f"invoked order: the service's state holds {text.decode()}", flush=True)

    status, headers, _ = invoke("report", body={}, Prefer="respond-async")
    location = headers.get("Location") or ""
    if status != 202 or not location:
        print(f"async report was not accepted: {status}", flush=True)
        return 1
    print(f"async report accepted: 202, Location {location}", flush=True)
    deadline = time.monotonic() + 20
    while (result := call("GET", location))[0] == 202:
        if time.monotonic() > deadline:
            print("the async report never finished", flush=True)
            return 1
        time.sleep(0.2)
    status, _, text = result
    if status != 200:
        print(f"async report ended with {status} {text!r}", flush=True)
        return 1
    print(f"async report done: {text.decode()}", flush=True)

    status, _, _ = call("POST", "/v1.0/state/statestore", [{"key": "last-run", "value": COUNT}])
    status_get, _, text = call("GET", "/v1.0/state/statestore/last-run")
    if status != 204 or status_get != 200 or json.loads(text) != COUNT:
        print(f"own state: save {status}, get {status_get} {text!r}", flush=True)
        return 1
    print(f"own state: saved and read back last-run = {text.decode()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
