"""Sync invocation with real processes: a ``kind: Resiliency`` ``targets.apps`` policy in the
caller's resources (retries matching 503, a per-attempt time-out), and an app invoking itself
through its own sidecar."""

from __future__ import annotations

import uuid

import pytest
import requests

from tests.e2e.conftest import Cluster, component
from tests.e2e.test_e2e_invoke import start_callee

pytestmark = [pytest.mark.e2e]

RESILIENCY = """\
apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata: {{name: invoke-policy}}
spec:
  policies:
    timeouts:
      short: 1s
    retries:
      twice:
        policy: constant
        duration: 50ms
        maxRetries: 2
        matching:
          httpStatusCodes: "503"
  targets:
    apps:
      {callee}: {{retry: twice, timeout: short}}
"""


def test_resiliency_policy_and_self_invocation(cluster: Cluster) -> None:
    db = str(cluster.tmp / "bus.db")
    pubsub = component("pubsub", "pubsub.sqlite", {"connectionString": db})
    callee_id = cluster.app_id("callee")
    callee = cluster.sidecar(callee_id, cluster.resources(pubsub), app=start_callee(cluster))
    caller = cluster.sidecar(
        cluster.app_id("caller"), cluster.resources(pubsub, RESILIENCY.format(callee=callee_id))
    )
    base = caller.url(f"/v1.0/invoke/{callee_id}/method")
    # Two 503s are retried: the third attempt answers
    reply = requests.get(f"{base}/flaky/2/{uuid.uuid4().hex}", timeout=30)
    assert (reply.status_code, reply.text) == (200, "3")
    # Three 503s exhaust the retries: the last reply comes back as it is
    reply = requests.get(f"{base}/flaky/5/{uuid.uuid4().hex}", timeout=30)
    assert (reply.status_code, reply.text) == (503, "3")
    # A status the policy does not match is not retried
    reply = requests.get(f"{base}/status/500", timeout=30)
    assert reply.status_code == 500
    # Each attempt is bounded by the time-out policy (then retried only on 503: not at all)
    reply = requests.get(f"{base}/slow/3000", timeout=30)
    assert reply.status_code == 500
    assert reply.json()["errorCode"] == "ERR_DIRECT_INVOKE"
    assert "no reply within 1s" in reply.json()["message"]
    # The callee invokes itself through its own sidecar (no bus hop)
    own = requests.post(
        callee.url(f"/v1.0/invoke/{callee_id}/method/inspect/self"), data=b"me", timeout=30
    )
    assert own.status_code == 200
    headers = {k.lower(): v for k, v in own.json()["headers"]}
    assert headers["dapr-caller-app-id"] == headers["dapr-callee-app-id"] == callee_id
