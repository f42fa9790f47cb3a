"""The CLI against real sidecar processes: ``run`` + ``list`` + ``publish`` on one bus file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from runtime.cli import main
from runtime.cli.run import free_port

ROOT = Path(__file__).resolve().parent.parent


def subscribed(port: int, topic: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1.0/metadata", timeout=1) as resp:
            metadata = json.loads(resp.read())
    except (OSError, ValueError):
        return False
    return any(s.get("topic") == topic for s in metadata.get("subscriptions", []))


@pytest.mark.e2e
def test_run_list_publish_with_a_real_sidecar(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given the example subscriber running under omnibus run on a private home
    monkeypatch.setenv("OMNIBUS_HOME", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "200")
    port = free_port()
    run = subprocess.Popen(
        [sys.executable, "-m", "runtime.cli", "run", "--app-id", "order-subscriber"]
        + ["--app-port", "0", "--dapr-http-port", str(port), "--"]
        + [sys.executable, str(ROOT / "examples" / "order-subscriber.py")],
        cwd=ROOT,
        env={**os.environ, "ORDERS_EXPECTED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not subscribed(port, "orders"):
            assert run.poll() is None and time.monotonic() < deadline, "never subscribed"
            time.sleep(0.1)

        # When omnibus list and omnibus publish run
        assert main(["list"]) == 0
        listed = capsys.readouterr().out
        assert main(["publish", "--pubsub", "pubsub", "--topic", "orders"] + DATA) == 0
        published = capsys.readouterr().out
        out, _ = run.communicate(timeout=30)
    finally:
        run.kill()

    # Then list showed the sidecar, the publish went through it, and the app got the order
    row = next(line for line in listed.splitlines() if "order-subscriber" in line)
    assert str(port) in row and "pubsub" in row
    assert "through the sidecar of 'order-subscriber'" in published
    assert '== APP == received order 42: {"orderId": 42}' in out
    assert run.returncode == 0


DATA = ["--data", '{"orderId": 42}']


@pytest.mark.e2e
def test_run_reports_a_sidecar_that_cannot_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a component file of an unknown type
    (tmp_path / "broken.yaml").write_text(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: pubsub\n"
        "spec:\n  type: pubsub.nope\n  version: v1\n"
    )

    # When omnibus run starts the sidecar with it
    code = main(
        ["run", "--app-id", "broken", "--resources-path", str(tmp_path), "--"]
        + [sys.executable, "-c", "print('the app ran')"]
    )

    # Then the sidecar's own error is shown, the app never starts, and the exit code is 1
    out = capsys.readouterr().out
    assert code == 1
    assert "broken.yaml" in out and "pubsub.nope" in out
    assert "the sidecar exited with code" in out and "before it was ready" in out
    assert "the app ran" not in out
