"""The official Dapr JS SDK (``@dapr/dapr``, HTTP), unchanged: a ``DaprClient`` app invokes a
method served by a ``DaprServer`` app, each under ``omnibus run``.

Needs ``node`` and ``tests/apps/node/node_modules`` (``npm ci --prefix tests/apps/node``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.backends import missing_service
from tests.e2e.conftest import APPS, ROOT, Cluster, component, free_port, wait_until

pytestmark = [pytest.mark.e2e]

NODE_APP = APPS / "node"


def _omnibus_run(args: list[str], home: Path, log: Path) -> subprocess.Popen[bytes]:
    environ = {k: v for k, v in os.environ.items() if k != "DAPR_API_TOKEN"}
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "runtime.cli", "run", *args],
            cwd=ROOT,
            env={**environ, "OMNIBUS_HOME": str(home)},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def test_js_sdk_client_invokes_a_js_sdk_server(cluster: Cluster) -> None:
    node = shutil.which("node")
    if node is None:
        missing_service("node is not installed")
    if not (NODE_APP / "node_modules" / "@dapr" / "dapr").is_dir():
        missing_service("tests/apps/node/node_modules is missing: npm ci --prefix tests/apps/node")
    assert node is not None
    db = str(cluster.tmp / "bus.db")
    resources = cluster.resources(component("pubsub", "pubsub.sqlite", {"connectionString": db}))
    common = ["--resources-path", str(resources)]
    # Given the SDK server app under omnibus run
    server_id, port = cluster.app_id("jsserver"), free_port()
    server_log = cluster.tmp / "server.log"
    server = _omnibus_run(
        ["--app-id", server_id, "--app-port", "0", "--dapr-http-port", str(port), *common,
         "--", node, str(NODE_APP / "sdk_server.mjs")],
        cluster.home,
        server_log,
    )  # fmt: skip
    try:
        wait_until(
            lambda: _status(f"http://127.0.0.1:{port}/v1.0/healthz") == 204,
            60,
            f"the SDK server's sidecar: {server_log.read_text()[-2000:]}",
        )
        # When the SDK client app runs under omnibus run
        client_log = cluster.tmp / "client.log"
        client = _omnibus_run(
            ["--app-id", cluster.app_id("jsclient"), *common,
             "--", node, str(NODE_APP / "sdk_client.mjs"), server_id],
            cluster.home,
            client_log,
        )  # fmt: skip
        assert client.wait(90) == 0, client_log.read_text()[-3000:]
    finally:
        server.terminate()
        server.wait(30)
    # Then it printed the server's answer
    line = next(x for x in client_log.read_text().splitlines() if "RESULT " in x)
    result = json.loads(line.split("RESULT ", 1)[1])
    assert result["received"] == {"hello": "from the js sdk"}
    assert result["caller"].startswith("jsclient-")


def _status(url: str) -> int:
    try:
        return requests.get(url, timeout=1).status_code
    except requests.ConnectionError:
        return 0
