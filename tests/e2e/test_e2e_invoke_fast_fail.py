"""A sync invocation whose callee's sidecar is SIGKILLed mid-call fails once the callee's presence
has expired, not at the call's 60 s time-out, on every bus backend."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from bus.presence import HEARTBEAT_INTERVAL, HEARTBEAT_TTL
from tests.e2e.conftest import Cluster, PubSubKind
from tests.e2e.test_e2e_invoke import start_callee

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# The last beat is at most one interval old at the kill, the entry expires a TTL later and the
# caller's watcher notices within one more interval; the rest is slack for a busy machine.
BOUND = HEARTBEAT_TTL + 2 * HEARTBEAT_INTERVAL + 3.0


def test_a_call_to_a_killed_callee_fails_fast(cluster: Cluster, pubsub: PubSubKind) -> None:
    # Given a callee whose app sleeps for a minute on a method, and a caller sidecar
    resources = cluster.resources(pubsub.component())
    callee_id = cluster.app_id("callee")
    callee = cluster.sidecar(callee_id, resources, app=start_callee(cluster))
    caller = cluster.sidecar(cluster.app_id("caller"), resources)
    url = caller.url(f"/v1.0/invoke/{callee_id}/method/slow/60000")
    with ThreadPoolExecutor(1) as pool:
        # When a call is under way and the callee's sidecar is killed -9
        pending = pool.submit(requests.post, url, data=b"work", timeout=90)
        time.sleep(1.0)
        assert not pending.done(), pending.result().text
        callee.kill()
        killed = time.monotonic()
        reply = pending.result()
        waited = time.monotonic() - killed
    # Then the caller answers 500 ERR_DIRECT_INVOKE within the presence TTL and a few seconds
    assert reply.status_code == 500, reply.text
    error = reply.json()
    assert error["errorCode"] == "ERR_DIRECT_INVOKE"
    assert error["message"] == (
        f"failed to invoke, id: {callee_id}, err: "
        f"no running instance of app {callee_id}: its last instance went away"
    )
    assert waited < BOUND, f"answered {waited:.1f}s after the kill"
