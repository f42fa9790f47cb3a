"""Dapr's hello-world (examples/hello-world), unchanged, under ``omnibus run``: the Python app
invokes the Node app's ``neworder``, which saves the order in the state store; ``GET /order``
through invocation returns the latest order and ``DELETE /order/order`` clears it.

On the embedded default (no resources path: the default components of a fresh ``OMNIBUS_HOME``)
and with Dapr's ``statestore.yaml`` of type ``state.redis`` (pointed at a private redis-server).
Needs ``node`` and ``examples/hello-world/node/node_modules`` (``npm ci`` there).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.backends import missing_service
from tests.e2e.conftest import ROOT, free_port, wait_until

pytestmark = [pytest.mark.e2e]

EXAMPLE = ROOT / "examples" / "hello-world"


class Runs:
    """``omnibus run`` processes of one test, stopped at the end."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, name: str, args: list[str], cwd: Path) -> subprocess.Popen[bytes]:
        log = self.tmp / f"{name}.log"
        environ = {k: v for k, v in os.environ.items() if k not in ("DAPR_API_TOKEN",)}
        environ["OMNIBUS_HOME"] = str(self.tmp / "home")
        with log.open("wb") as out:
            popen = subprocess.Popen(
                [sys.executable, "-m", "runtime.cli", "run", *args],
                cwd=cwd,
                env={**environ, "PYTHONPATH": str(ROOT)},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.procs.append((popen, log))
        return popen

    def logs(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for _, log in self.procs)

    def stop(self, popen: subprocess.Popen[bytes]) -> None:
        if popen.poll() is None:
            popen.send_signal(signal.SIGINT)
        try:
            popen.wait(20)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()

    def close(self) -> None:
        for popen, _ in reversed(self.procs):
            self.stop(popen)


@pytest.fixture
def runs(tmp_path: Path) -> Iterator[Runs]:
    made = Runs(tmp_path)
    try:
        yield made
    finally:
        made.close()


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        missing_service("node is not installed")
    if not (EXAMPLE / "node" / "node_modules" / "express").is_dir():
        missing_service("examples/hello-world/node/node_modules is missing: npm ci there")
    assert node is not None
    return node


def _latest_order(url: str) -> int | None:
    try:
        reply = requests.get(url, timeout=5)
    except requests.ConnectionError:
        return None
    if reply.status_code != 200 or not reply.content:
        return None
    order_id: int = reply.json()["orderId"]
    return order_id


@pytest.mark.parametrize("store", ["embedded", pytest.param("redis", marks=pytest.mark.redis)])
def test_hello_world(
    runs: Runs, tmp_path: Path, request: pytest.FixtureRequest, store: str
) -> None:
    node = _node()
    resources: list[str] = []
    if store == "redis":
        # Given Dapr's statestore.yaml, pointed at the test's private redis-server
        redis = request.getfixturevalue("redis_url")
        components = tmp_path / "components"
        components.mkdir()
        text = (EXAMPLE / "components" / "statestore.yaml").read_text()
        (components / "statestore.yaml").write_text(text.replace("localhost:6379", redis))
        resources = ["--resources-path", str(components)]
    # Given the Node app and the Python app, each under omnibus run
    node_port = free_port()
    nodeapp = ["--app-id", "nodeapp", "--app-port", "0", "--dapr-http-port", str(node_port)]
    runs.start("nodeapp", [*nodeapp, *resources, "--", node, "app.js"], EXAMPLE / "node")
    health = f"http://127.0.0.1:{node_port}/v1.0/healthz"
    wait_until(lambda: _status(health) == 204, 60, f"nodeapp's sidecar:\n{runs.logs()}")
    python = runs.start(
        "pythonapp",
        ["--app-id", "pythonapp", *resources, "--", sys.executable, "app.py"],
        EXAMPLE / "python",
    )
    # When orders flow, GET /order through invocation returns the latest one
    order_url = f"http://127.0.0.1:{node_port}/v1.0/invoke/nodeapp/method/order"
    first = wait_until(lambda: _latest_order(order_url), 60, f"a first order:\n{runs.logs()}")
    later = wait_until(
        lambda: (n := _latest_order(order_url)) is not None and n > first and n,
        30,
        f"a later order:\n{runs.logs()}",
    )
    assert later > first
    runs.stop(python)
    latest = _latest_order(order_url)
    assert latest is not None and latest >= later
    # And DELETE /order/order clears it
    deleted = requests.delete(f"{order_url}/order", timeout=10)
    assert deleted.status_code == 200, deleted.text
    cleared = requests.get(order_url, timeout=10)
    assert (cleared.status_code, cleared.content) == (200, b"")
    assert "HTTP " not in (tmp_path / "pythonapp.log").read_text()  # no failed invocation


def _status(url: str) -> int:
    try:
        return requests.get(url, timeout=1).status_code
    except requests.ConnectionError:
        return 0
