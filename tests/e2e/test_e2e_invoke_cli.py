"""``omnibus invoke`` against real sidecars: sync, a failing status, ``--async --wait``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT, Cluster, component
from tests.e2e.test_e2e_invoke import start_callee

pytestmark = [pytest.mark.e2e]


def _omnibus(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runtime.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
    )


def test_omnibus_invoke(cluster: Cluster, tmp_path: Path) -> None:
    db = str(tmp_path / "bus.db")
    resources = cluster.resources(component("pubsub", "pubsub.sqlite", {"connectionString": db}))
    callee_id = cluster.app_id("callee")
    cluster.sidecar(callee_id, resources, app=start_callee(cluster))
    caller = cluster.sidecar(cluster.app_id("caller"), resources)
    port = str(caller.port)
    # Given a sync call with a body and a header
    done = _omnibus(
        "invoke", "--dapr-http-port", port, "--app-id", callee_id,
        "--method", "inspect/x?q=1", "--data", '{"a": 1}', "--header", "X-Test=yes",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    status, _, body = done.stdout.partition("\n")
    assert status == "HTTP 200"
    seen = json.loads(body)
    assert (seen["verb"], seen["path"]) == ("POST", "/inspect/x?q=1")
    headers = {k.lower(): v for k, v in seen["headers"]}
    assert headers["x-test"] == "yes"
    assert headers["content-type"] == "application/json"
    # A non-2xx answer is printed and fails the command
    failed = _omnibus(
        "invoke", "--sidecar", caller.url(""), "--app-id", callee_id,
        "--method", "status/409", "--verb", "PUT",
    )  # fmt: skip
    assert failed.returncode == 1
    assert failed.stdout.startswith("HTTP 409\nas you wish")
    # --async --wait: accepted at once, then the recorded response
    waited = _omnibus(
        "invoke", "--dapr-http-port", port, "--app-id", callee_id,
        "--method", "status/201", "--async", "--wait", "--timeout", "60",
    )  # fmt: skip
    assert waited.returncode == 0, waited.stdout + waited.stderr
    lines = waited.stdout.splitlines()
    assert lines[0].startswith("accepted: /v1.0-alpha1/invocations/")
    assert lines[1:] == ["HTTP 201", "as you wish"]
