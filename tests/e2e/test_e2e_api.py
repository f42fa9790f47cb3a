"""The sidecar's HTTP API as a real process: error statuses, tokens, readiness, TTL, rawPayload,
start-up failures and shutdown."""

from __future__ import annotations

import asyncio
import base64
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from bus.presence import Presence
from bus.sqlite import SqliteBroker, SqliteSettings
from tests.e2e.conftest import ROOT, Cluster, component, free_port, wait_until

pytestmark = [pytest.mark.e2e]


def sqlite(cluster: Cluster, name: str = "pubsub") -> str:
    return component(name, "pubsub.sqlite", {"connectionString": str(cluster.tmp / "bus.db")})


ERRORS = [
    ("/v1.0/publish/nope/orders", {}, b"{}", 404, "ERR_PUBSUB_NOT_FOUND"),
    ("/v1.0/publish/pubsub/", {}, b"{}", 404, "ERR_TOPIC_NAME_EMPTY"),
    ("/v1.0/publish/pubsub/bad%20topic", {}, b"{}", 400, "ERR_MALFORMED_REQUEST"),
    (
        "/v1.0/publish/pubsub/t?metadata.ttlInSeconds=x",
        {},
        b"{}",
        400,
        "ERR_PUBSUB_REQUEST_METADATA",
    ),
    (
        "/v1.0/publish/pubsub/t",
        {"content-type": "application/cloudevents+json"},
        b"[1]",
        500,
        "ERR_PUBSUB_CLOUD_EVENTS_SER",
    ),
    ("/v1.0-alpha1/publish/bulk/pubsub/t", {}, b"{oops", 400, "ERR_MALFORMED_REQUEST"),
    ("/v1.0-alpha1/publish/bulk/pubsub/t", {}, b'[{"event": 1}]', 400, "ERR_PUBSUB_EVENTS_SER"),
    ("/v1.0/publish/pubsub/t", {}, b"x" * 2000, 413, "ERR_BODY_TOO_LARGE"),
    ("/v1.0/publish/pubsub/other", {}, b"{}", 403, "ERR_PUBSUB_FORBIDDEN"),
]


def test_every_error_status_and_the_sidecar_keeps_serving(cluster: Cluster) -> None:
    app_id = cluster.app_id("api")
    pubsub = component(
        "pubsub",
        "pubsub.sqlite",
        {"connectionString": str(cluster.tmp / "bus.db"), "publishingScopes": f"{app_id}=t"},
    )
    sidecar = cluster.sidecar(app_id, cluster.resources(pubsub), args=["--max-body-size", "1Ki"])
    for path, headers, body, status, code in ERRORS:
        reply = requests.post(sidecar.url(path), data=body, headers=headers, timeout=10)
        assert (reply.status_code, reply.json()["errorCode"]) == (status, code), path
    chunked = requests.post(
        sidecar.url("/v1.0/publish/pubsub/t"), data=iter([b"x" * 600, b"y" * 600]), timeout=10
    )
    assert chunked.status_code == 413
    assert requests.get(sidecar.url("/v1.0/healthz"), timeout=5).status_code == 204
    sidecar.publish("t", {"still": "serving"})


def test_token_on_the_api_and_towards_the_app(cluster: Cluster) -> None:
    topic = cluster.topic("secured")
    app = cluster.app([{"pubsubname": "pubsub", "topic": topic, "route": "/in"}])
    env = {"DAPR_API_TOKEN": "api-secret", "APP_API_TOKEN": "app-secret"}
    sidecar = cluster.sidecar(
        cluster.app_id("sec"), cluster.resources(sqlite(cluster)), app=app, env=env
    )
    url = sidecar.url(f"/v1.0/publish/pubsub/{topic}")
    denied = requests.post(url, json={}, timeout=5)
    assert (denied.status_code, denied.text) == (401, "invalid api token")
    wrong = requests.post(url, json={}, headers={"dapr-api-token": "nope"}, timeout=5)
    assert wrong.status_code == 401
    assert requests.get(sidecar.url("/v1.0/metadata"), timeout=5).status_code == 401
    assert requests.get(sidecar.url("/v1.0/healthz"), timeout=5).status_code == 204
    sidecar.publish(topic, {"n": 1})  # sends the token
    wait_until(lambda: app.received("/in"), what="the delivery")
    assert app.received("/in")[0]["headers"]["dapr-api-token"] == "app-secret"


def test_without_tokens_nothing_is_required_or_sent_and_presence_is_announced(
    cluster: Cluster,
) -> None:
    topic = cluster.topic("open")
    app = cluster.app([{"pubsubname": "pubsub", "topic": topic, "route": "/in"}])
    sidecar = cluster.sidecar(
        cluster.app_id("open"),
        cluster.resources(sqlite(cluster)),
        app=app,
        args=["--app-health-check-path", "/healthz"],
    )
    reply = requests.post(sidecar.url(f"/v1.0/publish/pubsub/{topic}"), json={"n": 1}, timeout=5)
    assert reply.status_code == 204
    wait_until(lambda: app.received("/in"), what="the delivery")
    assert "dapr-api-token" not in {k.lower() for k in app.received("/in")[0]["headers"]}
    (entry,) = asyncio.run(_sidecars(cluster.tmp / "bus.db"))
    assert entry.address == f"http://127.0.0.1:{sidecar.port}"
    assert entry.metadata["app_id"] == sidecar.app_id
    assert entry.metadata["app_port"] == str(app.port)
    assert entry.metadata["pubsub"] == "pubsub"
    assert entry.metadata["pid"] == str(sidecar.popen.pid)


async def _sidecars(db: Path) -> list[Presence]:
    async with SqliteBroker(SqliteSettings(path=db)) as broker:
        return await broker.instances("omnibus.sidecar")


def test_readiness_waits_for_the_app_and_in_memory_works_inside_one_sidecar(
    cluster: Cluster,
) -> None:
    # Given a sidecar whose app is not listening yet
    topic = cluster.topic("local")
    resources = cluster.resources(component("pubsub", "pubsub.in-memory", {}))
    app_port = free_port()
    sidecar = cluster.sidecar(
        cluster.app_id("mem"), resources, args=["--app-port", str(app_port)], wait=False
    )
    wait_until(
        lambda: _status(sidecar.url("/v1.0/healthz/outbound")) == 204, what="outbound health"
    )
    # Then it is outbound-ready but not ready
    reply = requests.get(sidecar.url("/v1.0/healthz"), timeout=5)
    assert (reply.status_code, reply.json()["errorCode"]) == (500, "ERR_HEALTH_NOT_READY")
    sidecar.publish(topic, {"early": True})
    # When the app comes up, the sidecar subscribes and delivers what was published before
    app = cluster.app([{"pubsubname": "pubsub", "topic": topic, "route": "/in"}], port=app_port)
    sidecar.wait_healthy()
    wait_until(lambda: app.received("/in"), what="the in-memory delivery")
    assert app.bodies("/in")[0]["data"] == {"early": True}
    metadata = sidecar.get("/v1.0/metadata").json()
    assert metadata["components"][0]["type"] == "pubsub.in-memory"
    assert metadata["subscriptions"][0]["type"] == "PROGRAMMATIC"


def _status(url: str) -> int:
    try:
        return requests.get(url, timeout=1).status_code
    except requests.ConnectionError:
        return 0


def test_ttl_expired_events_are_dropped_at_delivery(cluster: Cluster) -> None:
    # Given a route that keeps answering RETRY
    topic = cluster.topic("ttl")
    app = cluster.app(
        [{"pubsubname": "pubsub", "topic": topic, "route": "/slow"}], script={"/slow": "RETRY"}
    )
    sidecar = cluster.sidecar(cluster.app_id("ttl"), cluster.resources(sqlite(cluster)), app=app)
    # When an event with a 1 s TTL is published
    sidecar.publish(topic, {"n": 1}, params={"metadata.ttlInSeconds": "1"})
    wait_until(lambda: app.received("/slow"), what="the first delivery")
    event = app.bodies("/slow")[0]
    assert event["expiration"].endswith("Z")
    # Then once expired it is dropped at delivery (acked, logged), long before the retry policy
    # (10 attempts, exponential backoff) would have given up on it
    dropped = f"dropping expired event {event['id']} of topic {topic}"
    wait_until(lambda: dropped in sidecar.output(), timeout=10, what="the expired event dropped")
    seen = len(app.received("/slow"))
    assert 1 <= seen <= 4
    time.sleep(1.5)
    assert len(app.received("/slow")) == seen


def test_raw_payload_publish_and_subscribe(cluster: Cluster) -> None:
    topic = cluster.topic("raw")
    subscriptions = [
        {
            "pubsubname": "pubsub",
            "topic": topic,
            "route": "/raw",
            "metadata": {"rawPayload": "true"},
        }
    ]
    app = cluster.app(subscriptions)
    sidecar = cluster.sidecar(cluster.app_id("raw"), cluster.resources(sqlite(cluster)), app=app)
    payload = b"\x00\x01 not a cloud event \xff"
    reply = requests.post(
        sidecar.url(f"/v1.0/publish/pubsub/{topic}?metadata.rawPayload=true"),
        data=payload,
        headers={"content-type": "application/octet-stream"},
        timeout=5,
    )
    assert reply.status_code == 204
    wait_until(lambda: app.received("/raw"), what="the raw delivery")
    event = app.bodies("/raw")[0]
    assert base64.b64decode(event["data_base64"]) == payload
    assert event["datacontenttype"] == "application/octet-stream"


def test_a_bad_component_file_exits_1_with_the_problem_and_no_traceback(tmp_path: Path) -> None:
    resources = tmp_path / "res"
    resources.mkdir()
    (resources / "broken.yaml").write_text(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: pubsub\n"
        "spec:\n  type: pubsub.nonsense\n  version: v1\n"
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "runtime.sidecar",
            "--app-id",
            "bad",
            "--resources-path",
            str(resources),
            "--dapr-http-port",
            str(free_port()),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "broken.yaml" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "api"])
def test_shutdown_is_ordered_and_exits_0(cluster: Cluster, how: str) -> None:
    topic = cluster.topic("bye")
    app = cluster.app([{"pubsubname": "pubsub", "topic": topic, "route": "/in"}])
    sidecar = cluster.sidecar(cluster.app_id("bye"), cluster.resources(sqlite(cluster)), app=app)
    started = time.monotonic()
    if how == "api":
        assert sidecar.post("/v1.0/shutdown").status_code == 204
        code = sidecar.popen.wait(15)
    else:
        code = sidecar.stop(getattr(signal, how))
    assert code == 0, sidecar.output()[-2000:]
    assert time.monotonic() - started < 10
    log = sidecar.output()
    assert log.index("shutting down") < log.index("stopped")


def test_a_busy_port_exits_1_with_the_reason(cluster: Cluster) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "runtime.sidecar", "--app-id", "busy", "--dapr-http-port",
             str(port), "--resources-path", str(cluster.resources(sqlite(cluster)))],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )  # fmt: skip
    assert done.returncode == 1
    assert f"cannot serve the HTTP API on 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr


def test_without_resources_path_the_embedded_defaults_are_created_and_used(
    cluster: Cluster,
) -> None:
    sidecar = cluster.sidecar(cluster.app_id("plain"), None)
    pubsub, store = sidecar.get("/v1.0/metadata").json()["components"]
    assert (pubsub["name"], pubsub["type"]) == ("pubsub", "pubsub.sqlite")
    assert (store["name"], store["type"]) == ("statestore", "state.sqlite")
    assert (cluster.home / "components" / "pubsub.yaml").is_file()
    assert (cluster.home / "components" / "statestore.yaml").is_file()
    sidecar.publish(cluster.topic("plain"), {"n": 1})
    assert (cluster.home / "bus.db").is_file()
