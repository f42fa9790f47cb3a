"""Apps written for Dapr, unchanged, under ``omnibus run``: an express subscriber (Node, plain
fetch to the sidecar) and a Python publisher using ``requests``.

Needs ``node`` and ``tests/apps/node/node_modules`` (``npm ci --prefix tests/apps/node``, done by
the Makefile's install step); without them the test is skipped locally and fails under CI=true.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.backends import missing_service
from tests.e2e.conftest import APPS, ROOT, component, free_port, wait_until

pytestmark = [pytest.mark.e2e]

NODE_APP = APPS / "node"


def _omnibus_run(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "runtime.cli", "run", *args],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def test_express_subscriber_and_requests_publisher_work_unchanged(tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None:
        missing_service("node is not installed")
    if not (NODE_APP / "node_modules" / "express").is_dir():
        missing_service("tests/apps/node/node_modules is missing: npm ci --prefix tests/apps/node")
    # Given the quickstart's pubsub component on the embedded bus
    resources = tmp_path / "resources"
    resources.mkdir()
    db = str(tmp_path / "bus.db")
    (resources / "pubsub.yaml").write_text(
        component("orderpubsub", "pubsub.sqlite", {"connectionString": db})
    )
    common = ["--resources-path", str(resources)]
    # And the express order processor running under omnibus run
    http_port = free_port()
    processor_log = tmp_path / "processor.log"
    processor = _omnibus_run(
        [
            "--app-id",
            "order-processor",
            "--app-port",
            str(free_port()),
            "--dapr-http-port",
            str(http_port),
            *common,
            "--",
            str(node),
            str(NODE_APP / "app.js"),
        ],
        processor_log,
    )
    try:
        wait_until(
            lambda: _status(f"http://127.0.0.1:{http_port}/v1.0/healthz") == 204,
            timeout=60,
            what=f"the order processor's sidecar: {processor_log.read_text()[-2000:]}",
        )
        # When the Python publisher runs under omnibus run and exits
        publisher_log = tmp_path / "publisher.log"
        publisher = _omnibus_run(
            [
                "--app-id",
                "checkout",
                *common,
                "--",
                sys.executable,
                str(APPS / "order_publisher.py"),
                "5",
            ],
            publisher_log,
        )
        assert publisher.wait(60) == 0, publisher_log.read_text()
        assert publisher_log.read_text().count("Published data:") == 5

        # Then the express app received every order and published a confirmation for each
        def done() -> bool:
            text = processor_log.read_text()
            return text.count("Published confirmation:") >= 5

        wait_until(done, timeout=30, what="five confirmations")
        text = processor_log.read_text()
        for order_id in range(1, 6):
            assert f'Subscriber received: {{"orderId":{order_id}}}' in text
    finally:
        processor.terminate()
        try:
            processor.wait(30)
        except subprocess.TimeoutExpired:
            processor.kill()
            processor.wait()


def _status(url: str) -> int:
    try:
        return requests.get(url, timeout=1).status_code
    except requests.ConnectionError:
        time.sleep(0.1)
        return 0
