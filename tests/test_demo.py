"""``make demo``: the two example apps under ``omnibus run``, end to end on the embedded bus."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.e2e
def test_demo_runs_and_exits_zero() -> None:
    demo = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "demo.py")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        out, _ = demo.communicate(timeout=150)
    except subprocess.TimeoutExpired:
        demo.terminate()  # the demo stops its omnibus runs on SIGTERM
        out, _ = demo.communicate(timeout=30)
        pytest.fail(f"the demo did not finish in 150s:\n{out}")

    assert demo.returncode == 0, out
    for n in range(1, 6):
        assert f"publisher | == APP == published order {n}:" in out
        assert f"subscriber | == APP == received order {n}:" in out
    assert "subscriber | == APP == all 5 orders received, exiting" in out
    assert "demo: pub/sub: 5 orders went" in out
    for n in range(1, 6):
        assert f"client | == APP == invoked neworder {n}: 200" in out
        assert f"service | == APP == saved order {n} (invoked by order-client)" in out
    assert 'client | == APP == invoked order: the service\'s state holds {"orderId":5}' in out
    assert (
        "client | == APP == async report accepted: 202, Location /v1.0-alpha1/invocations/" in out
    )
    assert 'client | == APP == async report done: {"lastOrder": {"orderId": 5}}' in out
    assert "client | == APP == own state: saved and read back last-run = 5" in out
    assert "demo: done: pub/sub, sync and async invocation and state" in out
