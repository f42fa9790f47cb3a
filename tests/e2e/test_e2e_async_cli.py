"""``omnibus invocations list|get|cancel`` against a real sidecar process (sqlite bus)."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.cli import main
from tests.e2e.conftest import Cluster, component


def omnibus(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_list_get_and_cancel_through_the_apps_sidecar(
    cluster: Cluster,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OMNIBUS_HOME", str(cluster.home))
    monkeypatch.setenv("COLUMNS", "250")
    pubsub = component("pubsub", "pubsub.sqlite", {"connectionString": str(tmp_path / "bus.db")})
    resources = cluster.resources(pubsub)
    caller = cluster.sidecar(cluster.app_id("caller"), resources)
    callee = cluster.app_id("callee")  # never started: the invocation stays pending
    reply = caller.post(f"/v1.0/invoke/{callee}/method/work", headers={"Prefer": "respond-async"})
    assert reply.status_code == 202
    iid = reply.json()["id"]
    by_app = ["--app-id", caller.app_id, "--resources-path", str(resources)]
    by_port = ["--dapr-http-port", str(caller.port)]

    code, out = omnibus(capsys, "invocations", "list", *by_app)
    assert code == 0 and iid in out and callee in out and "pending" in out
    code, out = omnibus(capsys, "invocations", "get", iid, *by_port)
    assert code == 0 and "pending" in out
    code, out = omnibus(capsys, "invocations", "cancel", iid, *by_port)
    assert code == 0 and "cancelled" in out
    code, out = omnibus(capsys, "invocations", "get", iid, *by_port)
    assert code == 0 and "cancelled" in out
    code, out = omnibus(capsys, "invocations", "cancel", iid, *by_port)
    assert code == 0 and "cancelled" in out  # DELETE is idempotent
    code, out = omnibus(capsys, "invocations", "get", "0" * 32, *by_port)
    assert code == 1 and "ERR_INVOCATION_NOT_FOUND" in out
    code, out = omnibus(capsys, "invocations", "list", "--status", "pending", *by_port)
    assert code == 0 and "no invocations" in out
    code, out = omnibus(capsys, "invocations", "list", "--app-id", "nobody-here")
    assert code == 1 and "no running sidecar" in out
