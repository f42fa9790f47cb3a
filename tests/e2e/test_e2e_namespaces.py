"""Namespaced app ids with real processes: sidecars of one app id in the default namespace and
in ``NAMESPACE=prod`` (each with its own callee app, tests/apps/callee.py, named after its
namespace), and callers in both namespaces, on every bus backend.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import requests

from invoke.async_client import results_topic
from invoke.call import async_topic
from tests.e2e.conftest import ROOT, Cluster, PubSubKind, Sidecar, wait_until
from tests.e2e.test_e2e_invoke import start_callee

pytestmark = [pytest.mark.e2e]


def _inspect(caller: Sidecar, target: str) -> tuple[str, dict[str, str]]:
    """Which callee instance answered ``target``'s ``/inspect``, and the headers it received."""
    reply = requests.get(caller.url(f"/v1.0/invoke/{target}/method/inspect"), timeout=30)
    assert reply.status_code == 200, reply.text
    return reply.headers["X-Instance"], {k.lower(): v for k, v in reply.json()["headers"]}


def test_an_app_id_is_reached_in_the_namespace_named(cluster: Cluster, pubsub: PubSubKind) -> None:
    # Given the callee app id served in the default namespace and in prod
    resources = cluster.resources(pubsub.component())
    callee, caller_id = cluster.app_id("callee"), cluster.app_id("caller")
    prod = {"NAMESPACE": "prod"}
    cluster.sidecar(callee, resources, app=start_callee(cluster, "default"))
    cluster.sidecar(callee, resources, app=start_callee(cluster, "prod"), env=prod)
    # and callers of one app id in both namespaces
    caller = cluster.sidecar(caller_id, resources)
    prod_caller = cluster.sidecar(caller_id, resources, env=prod)

    # Then the namespace named in the target decides, else the caller's own
    instance, headers = _inspect(caller, f"{callee}.prod")
    assert instance == "prod"
    assert headers["dapr-caller-namespace"] == "default"
    assert headers["dapr-caller-app-id"] == caller_id
    assert headers["dapr-callee-app-id"] == callee
    assert _inspect(caller, callee)[0] == "default"
    instance, headers = _inspect(prod_caller, callee)
    assert (instance, headers["dapr-caller-namespace"]) == ("prod", "prod")
    assert _inspect(prod_caller, f"{callee}.default")[0] == "default"
    by_header = requests.get(
        caller.url("/inspect"), headers={"dapr-app-id": f"{callee}.prod"}, timeout=30
    )
    assert by_header.headers["X-Instance"] == "prod"

    # a target with two dots is Dapr's invalid app id
    bad = requests.get(caller.url(f"/v1.0/invoke/{callee}.prod.eu/method/inspect"), timeout=30)
    assert bad.status_code == 500
    assert bad.json() == {
        "errorCode": "ERR_DIRECT_INVOKE",
        "message": f"failed to invoke, id: {callee}.prod.eu, err: invalid app id {callee}.prod.eu",
    }

    # an async invocation of callee.prod runs in the prod app; its result comes back
    cluster.topics.update(
        {async_topic(callee, "prod"), results_topic(caller_id), results_topic(caller_id, "prod")}
    )
    submitted = caller.post(
        f"/v1.0/invoke/{callee}.prod/method/inspect", headers={"Prefer": "respond-async"}
    )
    assert submitted.status_code == 202, submitted.text
    location = submitted.headers["Location"]

    def finished() -> requests.Response | None:
        reply = caller.get(location)
        return reply if reply.status_code != 202 else None

    done: requests.Response = wait_until(finished, 15, "the async invocation's result")
    assert done.status_code == 200, done.text
    assert done.headers["X-Instance"] == "prod"
    assert done.headers["dapr-invocation-status"] == "completed"


def test_a_sidecar_refuses_a_dotted_app_id(cluster: Cluster) -> None:
    argv = [sys.executable, "-m", "runtime.sidecar", "--app-id", "orders.prod"]
    env = {"OMNIBUS_HOME": str(cluster.home), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, timeout=30, check=False)
    assert done.returncode != 0
    said = done.stderr.decode() + done.stdout.decode()
    assert "invalid app id 'orders.prod': an app id cannot contain dots" in said
