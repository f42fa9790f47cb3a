"""Sync service invocation with real processes: a caller sidecar, callee sidecars and their app
(tests/apps/callee.py), on every bus backend (the ``pubsub`` fixture: the component named
``pubsub`` is the system bus both sidecars share).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.e2e.conftest import APPS, App, Cluster, PubSubKind, Sidecar, free_port, wait_until

pytestmark = [pytest.mark.e2e]

MiB = 1024 * 1024


def start_callee(cluster: Cluster, name: str = "callee") -> App:
    """The callee app on a free port, once it accepts connections."""
    port = free_port()
    log = cluster.tmp / f"callee-{port}.log"
    argv = [sys.executable, str(APPS / "callee.py"), "--port", str(port), "--name", name]
    with log.open("wb") as out:
        popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    app = App(f"callee:{name}", popen, log, port=port)
    cluster.procs.append(app)
    wait_until(lambda: _answers(port), 15, f"the callee app {name}")
    return app


def _answers(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/status/200", timeout=1).ok
    except requests.ConnectionError:
        return False


@dataclass
class Invocation:
    """A caller sidecar and the callee's app id."""

    caller: Sidecar
    callee_id: str
    resources: Path

    def url(self, method: str) -> str:
        return self.caller.url(f"/v1.0/invoke/{self.callee_id}/method/{method}")

    def call(self, verb: str, method: str, **kwargs: object) -> requests.Response:
        kwargs.setdefault("timeout", 30)
        return requests.request(verb, self.url(method), **kwargs)  # type: ignore[arg-type]


def _setup(cluster: Cluster, pubsub: PubSubKind, replicas: int = 1) -> Invocation:
    resources = cluster.resources(pubsub.component())
    callee_id = cluster.app_id("callee")
    for i in range(replicas):
        app = start_callee(cluster, f"replica-{i}")
        cluster.sidecar(callee_id, resources, app=app)
    caller = cluster.sidecar(cluster.app_id("caller"), resources)
    return Invocation(caller, callee_id, resources)


def test_requests_and_replies_pass_through(cluster: Cluster, pubsub: PubSubKind) -> None:
    inv = _setup(cluster, pubsub)
    # every verb gets the app's own status
    for verb in ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
        for status in (200, 201, 202, 409, 502):
            reply = inv.call(verb, f"status/{status}")
            assert reply.status_code == status, (verb, reply.text)
            assert reply.text == "as you wish"
    # path (encoded segment kept), query, headers both ways
    reply = inv.call(
        "POST",
        "echo/a%2Fb//c?x=1&x=2&y=%20z",
        data=b"\x00\x01binary",
        headers={"X-Custom": "one", "traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"},
    )
    assert reply.status_code == 200, reply.text
    assert reply.content == b"\x00\x01binary"
    seen = json.loads(reply.headers["X-Request"])
    assert seen["verb"] == "POST"
    assert seen["path"] == "/echo/a%2Fb/c?x=1&x=2&y=%20z"
    headers = {k.lower(): v for k, v in seen["headers"]}
    assert headers["x-custom"] == "one"
    assert headers["dapr-caller-app-id"] == inv.caller.app_id
    assert headers["dapr-callee-app-id"] == inv.callee_id
    assert headers["traceparent"].startswith("00-" + "a" * 32 + "-")
    assert "dapr-api-token" not in headers
    cookies = inv.call("GET", "cookies")
    assert cookies.raw.headers.getlist("Set-Cookie") == ["a=1", "b=2"]
    # the dapr-app-id header form and Basic auth
    reply = requests.put(
        inv.caller.url("/status/201"), headers={"dapr-app-id": inv.callee_id}, timeout=30
    )
    assert reply.status_code == 201
    token = base64.b64encode(f"dapr-app-id:{inv.callee_id}".encode()).decode()
    reply = requests.get(
        inv.caller.url("/status/202"), headers={"Authorization": f"Basic {token}"}, timeout=30
    )
    assert reply.status_code == 202
    head = inv.call("HEAD", "status/200")
    assert head.status_code == 200 and head.headers["Content-Length"] == "11"


@pytest.mark.parametrize("size", [1 * MiB, 4 * MiB], ids=["1MiB", "4MiB"])
def test_large_binary_bodies(cluster: Cluster, pubsub: PubSubKind, size: int) -> None:
    inv = _setup(cluster, pubsub)
    body = os.urandom(size)
    reply = inv.call("POST", "echo", data=body)
    assert reply.status_code == 200, reply.text[:500]
    assert hashlib.sha256(reply.content).digest() == hashlib.sha256(body).digest()
    # one byte over the limit is refused before it travels
    over = inv.call("POST", "echo", data=os.urandom(4 * MiB + 1))
    assert over.status_code == 413


def test_parallel_calls_are_shared_by_replicas(cluster: Cluster, pubsub: PubSubKind) -> None:
    inv = _setup(cluster, pubsub, replicas=2)

    def one(i: int) -> tuple[int, str, bytes]:
        reply = inv.call("POST", f"echo/{i}", data=f"call-{i}".encode())
        return reply.status_code, reply.headers.get("X-Instance", ""), reply.content

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(one, range(200)))
    assert [status for status, _, _ in results] == [200] * 200
    assert [body for _, _, body in results] == [f"call-{i}".encode() for i in range(200)]
    instances = Counter(instance for _, instance, _ in results)
    assert set(instances) == {"replica-0", "replica-1"}, instances


def test_errors_as_dapr(cluster: Cluster, pubsub: PubSubKind) -> None:
    inv = _setup(cluster, pubsub)
    # no running instance: at once, not after a time-out
    started = time.monotonic()
    reply = requests.get(inv.caller.url("/v1.0/invoke/nobody-here/method/x"), timeout=30)
    assert time.monotonic() - started < 2
    assert reply.status_code == 500
    assert reply.json()["errorCode"] == "ERR_DIRECT_INVOKE"
    assert "no running instance" in reply.json()["message"]
    # no app id
    reply = requests.get(inv.caller.url("/v1.0/invoke/x"), timeout=30)
    assert reply.status_code == 404
    assert reply.json()["errorCode"] == "ERR_DIRECT_INVOKE"
    # the app stops listening: 500 with the reason
    app = next(p for p in cluster.procs if isinstance(p, App))
    app.kill()
    reply = inv.call("GET", "status/200")
    assert reply.status_code == 500, reply.text
    error = reply.json()
    assert error["errorCode"] == "ERR_DIRECT_INVOKE"
    assert error["message"].startswith(f"failed to invoke, id: {inv.callee_id}, err: ")
