"""Async invocation with real processes: sidecars (``python -m runtime.sidecar``) and an invoked app
(tests/apps/invoked_app.py), on the sqlite bus with the embedded result store and on Redis with
a ``state.redis`` result store (``--invocation-store``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.e2e.conftest import (
    APPS,
    ROOT,
    App,
    Cluster,
    PubSubKind,
    Sidecar,
    component,
    free_port,
    wait_until,
)

ASYNC = {"Prefer": "respond-async"}


def resiliency(callee: str) -> str:
    """Quick retries and a short time-out for the callee's async invocations."""
    return f"""apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata:
  name: async
spec:
  policies:
    retries:
      quick:
        policy: constant
        duration: 200ms
        maxRetries: 3
    timeouts:
      short: 2s
  targets:
    apps:
      {callee}:
        retry: quick
        timeout: short
"""


@dataclass
class Setup:
    cluster: Cluster
    resources: Path
    args: list[str]
    callee: str
    caller: str

    def app(self, script: dict[str, str]) -> App:
        port = free_port()
        record = self.cluster.tmp / f"invoked-{port}.jsonl"
        log = self.cluster.tmp / f"invoked-{port}.log"
        argv = [sys.executable, str(APPS / "invoked_app.py"), "--port", str(port)]
        argv += ["--record", str(record), "--script", json.dumps(script)]
        with log.open("wb") as out:
            popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        app = App(f"invoked:{port}", popen, log, port=port, record=record)
        self.cluster.procs.append(app)
        return app

    def callee_sidecar(self, app: App) -> Sidecar:
        return self.cluster.sidecar(self.callee, self.resources, app=app, args=self.args)

    def caller_sidecar(self) -> Sidecar:
        return self.cluster.sidecar(self.caller, self.resources, args=self.args)


@pytest.fixture
def setup(cluster: Cluster, pubsub: PubSubKind) -> Setup:
    callee, caller = cluster.app_id("callee"), cluster.app_id("caller")
    documents = [resiliency(callee)]
    args: list[str] = []
    if pubsub.type == "pubsub.redis":
        documents.append(pubsub.component(redeliverInterval="1s"))
        host = pubsub.metadata["redisHost"]
        documents.append(component("results", "state.redis", {"redisHost": host}))
        args = ["--invocation-store", "results"]
    else:  # sqlite and rabbitmq: results in the machine's shared invocations.db
        documents.append(pubsub.component())
    return Setup(cluster, cluster.resources(*documents), args, callee, caller)


def submit(sidecar: Sidecar, callee: str, body: Any, headers: dict[str, str] | None = None) -> str:
    reply = sidecar.post(
        f"/v1.0/invoke/{callee}/method/work", json=body, headers={**ASYNC, **(headers or {})}
    )
    assert reply.status_code == 202, reply.text
    iid: str = reply.json()["id"]
    assert reply.headers["Location"] == f"/v1.0-alpha1/invocations/{iid}"
    return iid


def result(sidecar: Sidecar, iid: str, timeout: float = 40.0) -> requests.Response:
    def finished() -> list[requests.Response]:
        reply = sidecar.get(f"/v1.0-alpha1/invocations/{iid}")
        return [] if reply.status_code == 202 else [reply]  # a Response of a 5xx is falsy

    found: list[requests.Response] = wait_until(finished, timeout, f"the result of {iid}")
    return found[0]


def deliveries(app: App) -> dict[str, list[dict[str, Any]]]:
    """The requests the app received, by invocation id."""
    seen: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for line in app.received("/work"):
        seen[line["headers"].get("dapr-invocation-id", "")].append(line)
    return seen


def test_submission_then_result_after_two_503s_with_a_callee_started_later(setup: Setup) -> None:
    # Given a submission while no instance of the callee runs
    caller = setup.caller_sidecar()
    iid = submit(caller, setup.callee, {"order": 7})
    pending = caller.get(f"/v1.0-alpha1/invocations/{iid}")
    assert pending.status_code == 202 and pending.json()["status"] == "pending"
    # When the callee comes up and answers 503 twice
    app = setup.app({"/work": "FAIL2"})
    setup.callee_sidecar(app)
    # Then the third answer is recorded verbatim
    reply = result(caller, iid)
    assert reply.status_code == 200, reply.text
    assert reply.headers["dapr-invocation-status"] == "completed"
    assert reply.headers["X-App"] == "invoked"
    assert reply.json() == {"id": iid, "seen": 3, "body": '{"order": 7}'}
    calls = deliveries(app)[iid]
    assert [c["headers"]["dapr-invocation-attempt"] for c in calls] == ["1", "2", "3"]
    assert all(c["method"] == "POST" for c in calls)
    # and the same Idempotency-Key later gives the same invocation, without a new run
    key = {"Idempotency-Key": "order-7"}
    first = submit(caller, setup.callee, {"order": 8}, key)
    assert result(caller, first).status_code == 200
    runs = len(deliveries(app)[first])
    assert submit(caller, setup.callee, {"order": 8}, key) == first
    assert len(deliveries(app)[first]) == runs


def test_dead_lettered_after_its_attempts(setup: Setup) -> None:
    app = setup.app({"/work": "FAIL99"})
    setup.callee_sidecar(app)
    caller = setup.caller_sidecar()
    iid = submit(caller, setup.callee, {"order": 9})
    reply = result(caller, iid)
    assert reply.status_code == 503
    assert reply.headers["dapr-invocation-status"] == "failed"
    assert len(deliveries(app)[iid]) == 4  # maxRetries 3
    listing = subprocess.run(
        [sys.executable, "-m", "runtime.cli", "dlq", "list", "--pubsub", "pubsub"]
        + ["--topic", f"omnibus.invoke-async.{setup.callee}"]
        + ["--resources-path", str(setup.resources)],
        cwd=ROOT,
        env={**os.environ, "OMNIBUS_HOME": str(setup.cluster.home), "COLUMNS": "250"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listing.returncode == 0, listing.stderr
    assert iid in listing.stdout


def test_sigkill_of_either_sidecar_completes_every_invocation(setup: Setup) -> None:
    # Given invocations in the app when its sidecar dies, and the caller's sidecar dead too
    app = setup.app({"/work": "SLOW400"})
    callee = setup.callee_sidecar(app)
    caller = setup.caller_sidecar()
    ids = [submit(caller, setup.callee, {"n": n}) for n in range(12)]
    wait_until(lambda: deliveries(app), 30, "a first delivery")
    callee.kill()
    caller.kill()
    # When the callee's sidecar comes back (the replies wait for the caller meanwhile)
    setup.callee_sidecar(app)
    wait_until(lambda: set(ids) <= set(deliveries(app)), 60, "every invocation delivered")
    # and then the caller's sidecar
    caller = setup.caller_sidecar()
    # Then every invocation completed, and the app saw each one at least once
    done_at: dict[str, float] = {}
    for iid in ids:
        reply = result(caller, iid, timeout=60)
        done_at[iid] = time.time()
        assert reply.status_code == 200, reply.text
        assert reply.json()["id"] == iid
    seen = deliveries(app)
    assert set(seen) == set(ids)
    for iid in ids:
        # every delivery carried the id; none came after the result was recorded
        assert all(d["headers"]["dapr-invocation-id"] == iid for d in seen[iid])
        assert max(d["time"] for d in seen[iid]) <= done_at[iid]
