"""The official Dapr Python SDK (``dapr`` on PyPI), unchanged: ``DaprClient().invoke_method``
(HTTP by default) from an app under ``omnibus run`` to the callee app through two sidecars."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.e2e.conftest import APPS, ROOT, Cluster, component
from tests.e2e.test_e2e_invoke import start_callee

pytestmark = [pytest.mark.e2e]


def test_python_sdk_invoke_method(cluster: Cluster) -> None:
    pytest.importorskip("dapr.clients", reason="the dapr SDK is in the test extra")
    db = str(cluster.tmp / "bus.db")
    resources = cluster.resources(component("pubsub", "pubsub.sqlite", {"connectionString": db}))
    callee_id = cluster.app_id("callee")
    cluster.sidecar(callee_id, resources, app=start_callee(cluster))
    # When an SDK app runs under omnibus run, invoking the callee
    caller_id = cluster.app_id("sdk")
    done = subprocess.run(
        [sys.executable, "-m", "runtime.cli", "run", "--app-id", caller_id,
         "--resources-path", str(resources), "--",
         sys.executable, str(APPS / "sdk_invoker.py"), callee_id],
        cwd=ROOT,
        env={"OMNIBUS_HOME": str(cluster.home), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    # Then both calls got the callee's answers
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [json.loads(line.split("== APP ==", 1)[1]) for line in done.stdout.splitlines()
             if "== APP ==" in line and "{" in line]  # fmt: skip
    posted, got = lines
    assert posted["status"] == 200
    seen = json.loads(posted["body"])
    assert (seen["verb"], seen["path"]) == ("POST", "/inspect/sdk?via=python")
    headers = {k.lower(): v for k, v in seen["headers"]}
    assert headers["content-type"] == "application/json"
    assert headers["dapr-caller-app-id"] == caller_id
    assert seen["length"] == len(json.dumps({"hello": "omnibus"}))
    assert got == {"status": 201, "body": "as you wish"}
