"""The ``dapr-callback`` of an async invocation with real processes (sqlite bus): the result is
POSTed to the caller app, again while the app refuses it."""

from __future__ import annotations

import json
from pathlib import Path

from tests.e2e.conftest import Cluster, component, wait_until
from tests.e2e.test_e2e_async import ASYNC, Setup, resiliency


def test_the_result_is_posted_to_the_callers_callback_until_it_takes_it(
    cluster: Cluster, tmp_path: Path
) -> None:
    callee, caller = cluster.app_id("callee"), cluster.app_id("caller")
    pubsub = component("pubsub", "pubsub.sqlite", {"connectionString": str(tmp_path / "bus.db")})
    setup = Setup(cluster, cluster.resources(pubsub, resiliency(callee)), [], callee, caller)
    setup.callee_sidecar(setup.app({}))
    caller_app = setup.app({"/done": "FAIL1"})  # refuses the first callback with a 503
    sidecar = cluster.sidecar(caller, setup.resources, app=caller_app)
    reply = sidecar.post(
        f"/v1.0/invoke/{callee}/method/work",
        json={"order": 1},
        headers={**ASYNC, "dapr-callback": "/done"},
    )
    assert reply.status_code == 202, reply.text
    iid = reply.json()["id"]
    calls = wait_until(lambda: caller_app.received("/done")[1:], 30, "a retry")
    callback = calls[-1]
    assert callback["method"] == "POST"
    headers = {k.lower(): v for k, v in callback["headers"].items()}
    assert headers["dapr-invocation-id"] == iid
    assert headers["dapr-invocation-status"] == "completed"
    assert headers["dapr-invocation-http-status"] == "200"
    assert headers["content-type"] == "application/json"
    assert json.loads(callback["body"])["id"] == iid
    got = sidecar.get(f"/v1.0-alpha1/invocations/{iid}")
    assert got.status_code == 200 and got.headers["dapr-invocation-status"] == "completed"
