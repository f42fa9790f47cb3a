"""The random-request fuzzer (tests/fuzz_sidecar.py) against a real sidecar process, at a size
that fits the suite: a few hundred seeded requests over every route and verb.

The large run is ``python -m tests.fuzz_sidecar --requests 10000``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Cluster, free_port
from tests.fuzz_sidecar import APP_ID, fuzz, resources, sidecar_args, start_callee

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REQUESTS = 300
# Every run sends the same requests; the second with the API token on (most requests carry it).
RUNS = [(1, None), (2, "s3cret")]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """The sidecar process of one test (tests/e2e's fixture, which lives in its conftest)."""
    made = Cluster(tmp_path, tmp_path / "home")
    try:
        yield made
    finally:
        made.close()


@pytest.mark.parametrize(("seed", "token"), RUNS)
def test_random_requests_never_break_the_sidecar(
    cluster: Cluster, tmp_path: Path, seed: int, token: str | None
) -> None:
    # Given a sidecar with pub/sub and state on SQLite and an app to invoke
    callee_port = free_port()
    callee = start_callee(callee_port, tmp_path / "callee.log")
    try:
        files = cluster.resources(*resources(tmp_path))
        env = {"DAPR_API_TOKEN": token} if token else {}
        sidecar = cluster.sidecar(APP_ID, files, args=sidecar_args(callee_port), env=env)
        # When it gets a few hundred random requests
        report = fuzz(sidecar.port, sidecar.log, requests=REQUESTS, seed=seed, token=token)
    finally:
        callee.terminate()
        callee.wait(10)
    # Then every one was answered, no 4xx or 5xx lacked Dapr's error body, no traceback,
    # and the sidecar is still healthy
    details = json.dumps(report.findings[:5], indent=1)
    assert not report.findings, f"{len(report.findings)} findings, the first:\n{details}"
    assert report.sent == REQUESTS
    assert report.healthy_at_end
    assert "Traceback" not in sidecar.output()
    # and the run reached every route
    assert len(report.routes) >= 17, report.routes
