"""The state API with real sidecar processes sharing the embedded system bus of one OMNIBUS_HOME.

Key prefixes keep apps apart; a sidecar without the store's component reaches it through the
sidecar that serves it, which refuses apps the component's ``scopes`` exclude.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.e2e.conftest import App, Cluster, PubSubKind, Sidecar, component, wait_until


def _statestore(cluster: Cluster, tmp_path: Path, scopes: tuple[str, ...] = ()) -> Path:
    text = component("statestore", "state.sqlite", {"connectionString": str(tmp_path / "s.db")})
    if scopes:
        text += "scopes:\n" + "".join(f"  - {app}\n" for app in scopes)
    return cluster.resources(text)


def save(sidecar: Sidecar, key: str, value: object, store: str = "statestore") -> None:
    reply = sidecar.post(f"/v1.0/state/{store}", json=[{"key": key, "value": value}])
    assert reply.status_code == 204, reply.text


def get(sidecar: Sidecar, key: str, store: str = "statestore") -> requests.Response:
    return sidecar.get(f"/v1.0/state/{store}/{key}")


def test_two_apps_do_not_see_each_others_keys(cluster: Cluster, tmp_path: Path) -> None:
    resources = _statestore(cluster, tmp_path)
    orders = cluster.sidecar(cluster.app_id("orders"), resources)
    billing = cluster.sidecar(cluster.app_id("billing"), resources)

    save(orders, "order-1", {"total": 10})
    assert get(orders, "order-1").json() == {"total": 10}
    assert get(billing, "order-1").status_code == 204

    save(billing, "order-1", {"total": 99})
    assert get(orders, "order-1").json() == {"total": 10}
    assert get(billing, "order-1").json() == {"total": 99}


def test_a_sidecar_without_the_component_reaches_the_store_over_the_bus(
    cluster: Cluster, tmp_path: Path
) -> None:
    server = cluster.sidecar(cluster.app_id("server"), _statestore(cluster, tmp_path))
    client = cluster.sidecar(cluster.app_id("client"), cluster.resources())
    names = [c["name"] for c in client.get("/v1.0/metadata").json()["components"]]
    assert "statestore" not in names

    save(client, "k", {"from": "client"})
    reply = get(client, "k")
    assert reply.status_code == 200 and reply.json() == {"from": "client"}
    assert reply.headers["ETag"]
    assert get(server, "k").status_code == 204  # the client's prefix, not the server's

    bulk = client.post("/v1.0/state/statestore/bulk", json={"keys": ["k", "nope"]})
    assert [e["key"] for e in bulk.json()] == ["k", "nope"]
    stale = client.post(
        "/v1.0/state/statestore", json=[{"key": "k", "value": 1, "etag": "not-the-etag"}]
    )
    assert stale.status_code == 409 and stale.json()["errorCode"] == "ERR_STATE_SAVE"
    assert requests.delete(client.url("/v1.0/state/statestore/k"), timeout=10).status_code == 204
    assert get(client, "k").status_code == 204

    # nobody serves this store: an answer at once, not a time-out
    started = time.monotonic()
    missing = get(client, "k", store="nostore")
    assert missing.status_code == 400
    assert missing.json()["errorCode"] == "ERR_STATE_STORE_NOT_FOUND"
    assert time.monotonic() - started < 5


def test_scopes_refuse_an_app_the_component_excludes(cluster: Cluster, tmp_path: Path) -> None:
    allowed = cluster.app_id("allowed")
    resources = _statestore(cluster, tmp_path, scopes=(allowed,))
    server = cluster.sidecar(allowed, resources)
    outsider = cluster.sidecar(cluster.app_id("outsider"), resources)

    save(server, "k", 1)
    assert get(server, "k").json() == 1
    refused = get(outsider, "k")
    assert refused.status_code == 400, refused.text
    assert refused.json()["errorCode"] == "ERR_STATE_STORE_NOT_FOUND"
    saved = outsider.post("/v1.0/state/statestore", json=[{"key": "k", "value": 2}])
    assert saved.status_code == 400
    assert get(server, "k").json() == 1


def test_the_state_cli_goes_through_a_running_sidecar(
    cluster: Cluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from runtime.cli import main

    bus = component("pubsub", "pubsub.sqlite", {"connectionString": str(tmp_path / "bus.db")})
    store = component("statestore", "state.sqlite", {"connectionString": str(tmp_path / "s.db")})
    resources = cluster.resources(bus, store)
    app_id = cluster.app_id("cli")
    sidecar = cluster.sidecar(app_id, resources)
    found = ["--resources-path", str(resources), "--app-id", app_id]  # through presence

    assert main(["state", "set", "order-1", '{"total": 10}', *found]) == 0
    assert main(["state", "get", "order-1", *found]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == {"total": 10}
    assert get(sidecar, "order-1").json() == {"total": 10}  # the sidecar's own app prefix

    port = ["--dapr-http-port", str(sidecar.port)]
    assert main(["state", "set", "order-2", '"two"', "--first-write", *port]) == 0
    assert main(["state", "set", "order-2", '"again"', "--first-write", *port]) == 1
    assert "ERR_STATE_SAVE" in capsys.readouterr().err
    capsys.readouterr()
    assert main(["state", "list", *port]) == 0
    listing = capsys.readouterr().out
    assert "order-1" in listing and "order-2" in listing
    assert main(["state", "delete", "order-1", *port]) == 0
    assert main(["state", "get", "order-1", *port]) == 1
    assert main(["state", "get", "k", "--store", "nostore", *port]) == 1
    assert "ERR_STATE_STORE_NOT_FOUND" in capsys.readouterr().err


@dataclass(slots=True)
class _FeedCluster:
    """A writer sidecar serving a SQLite store whose change feed goes to a watcher app."""

    cluster: Cluster
    resources: Path
    writer_id: str
    writer: Sidecar
    watcher: App

    @classmethod
    def start(cls, cluster: Cluster, tmp_path: Path) -> _FeedCluster:
        topic = cluster.topic("changes")
        bus = component("pubsub", "pubsub.sqlite", {"connectionString": str(tmp_path / "bus.db")})
        feed = {"changeFeedPubsub": "pubsub", "changeFeedTopic": topic}
        store = component(
            "statestore", "state.sqlite", {"connectionString": str(tmp_path / "s.db"), **feed}
        )
        watcher = cluster.app([{"pubsubname": "pubsub", "topic": topic, "route": "/changes"}])
        cluster.sidecar(cluster.app_id("watcher"), cluster.resources(bus), app=watcher)
        resources = cluster.resources(bus, store)
        writer_id = cluster.app_id("writer")
        return cls(cluster, resources, writer_id, cluster.sidecar(writer_id, resources), watcher)

    def restart_writer(self) -> Sidecar:
        """The writer started again on its port (after a kill)."""
        return self.cluster.sidecar(self.writer_id, self.resources, port=self.writer.port)


def _upserts(app: App) -> list[dict[str, Any]]:
    """The ``data`` of every upsert event the watcher received."""
    return [
        body["data"]
        for body in app.bodies("/changes")
        if body["type"] == "com.omnibus.state.changed" and body["data"]["operation"] == "upsert"
    ]


def test_the_change_feed_reports_every_change_across_a_sigkill_of_the_writer(
    cluster: Cluster, tmp_path: Path
) -> None:
    feed = _FeedCluster.start(cluster, tmp_path)
    app, writer = feed.watcher, feed.writer

    # Given a client saving keys one after another, retrying each until it is acknowledged,
    acked: list[str] = []
    done = threading.Event()

    def write() -> None:
        for i in range(200):
            while True:
                try:
                    reply = requests.post(
                        writer.url("/v1.0/state/statestore"),
                        json=[{"key": f"k{i}", "value": {"n": i}}],
                        timeout=5,
                    )
                    if reply.status_code == 204:
                        acked.append(f"k{i}")
                        break
                except requests.RequestException:
                    pass
                time.sleep(0.05)  # the writer is down: poll until it is back
        done.set()

    client = threading.Thread(target=write, daemon=True)
    client.start()
    # When the writer is killed -9 in the middle of the stream and started again on its port,
    wait_until(lambda: len(acked) >= 10, timeout=30, what="ten acknowledged saves")
    writer.kill()
    assert not done.is_set(), "the kill came after the stream had ended"
    feed.restart_writer()
    assert done.wait(60), "the client could not finish its saves"

    # Then every acknowledged change has reached the watcher at least once, as an upsert.
    def missing() -> set[str]:
        seen = {data["key"] for data in _upserts(app)}
        return set(acked) - seen

    wait_until(lambda: not missing(), timeout=60, what="an event for every acknowledged save")
    assert len(acked) == 200


def test_every_committed_save_has_its_event_though_the_writer_died_and_nobody_retried(
    cluster: Cluster, tmp_path: Path
) -> None:
    feed = _FeedCluster.start(cluster, tmp_path)
    app, writer = feed.watcher, feed.writer

    # Given clients saving new keys side by side, each giving up at its first failure (no retry),
    sent: list[str] = []
    acked: list[str] = []
    refused: list[str] = []
    stop = threading.Event()

    def write(client: int) -> None:
        with requests.Session() as session:
            for i in range(10_000):
                if stop.is_set():
                    return
                name = f"c{client}-{i}"
                sent.append(name)
                try:
                    reply = session.post(
                        writer.url("/v1.0/state/statestore"),
                        json=[{"key": name, "value": {"n": i}}],
                        timeout=10,
                    )
                except requests.RequestException:
                    return  # the writer died under this save: whether it committed is unknown
                if reply.status_code != 204:
                    refused.append(f"{name}: {reply.status_code} {reply.text}")
                    return
                acked.append(name)

    clients = [threading.Thread(target=write, args=(c,), daemon=True) for c in range(12)]
    for client in clients:
        client.start()
    # When the writer is killed -9 with saves in flight (at a moment when the store holds more
    # saves than were answered, if one comes within a few seconds), and started again on its port,
    wait_until(lambda: len(acked) >= 150, timeout=60, what="saves acknowledged")
    with contextlib.closing(sqlite3.connect(f"file:{tmp_path / 's.db'}?mode=ro", uri=True)) as db:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            stored = db.execute("SELECT count(*) FROM state").fetchone()[0]
            if stored > len(acked):  # counted in this order, some stored saves are unanswered
                break
            time.sleep(0.002)
    writer.kill()
    stop.set()
    for client in clients:
        client.join(15)
    assert not refused, refused
    restarted = feed.restart_writer()

    # Then every save the store holds (acknowledged or not) has an upsert event with its etag.
    found = restarted.post("/v1.0/state/statestore/bulk", json={"keys": sent}).json()
    committed = {entry["key"]: entry["etag"] for entry in found if "data" in entry}
    assert set(acked) <= set(committed)

    def missing() -> set[str]:
        seen = {(data["key"], data["etag"]) for data in _upserts(app)}
        return {key for key, etag in committed.items() if (key, etag) not in seen}

    wait_until(lambda: not missing(), timeout=60, what="an event for every committed save")
    unacknowledged = set(committed) - set(acked)
    print(f"{len(committed)} saves committed, {len(unacknowledged)} of them never acknowledged")


def test_a_store_is_reached_over_every_bus_backend(cluster: Cluster, pubsub: PubSubKind) -> None:
    # the component named "pubsub" is the system bus of both sidecars; a store name unique to the
    # test, so its topic (removed from shared brokers afterwards) is too
    name = f"store-{uuid.uuid4().hex[:8]}"
    cluster.topics.add(f"omnibus.state.{name}")
    cluster.app_ids.add("omnibus-call")  # the group every call-mode server joins
    store = component(name, "state.in-memory", {})
    cluster.sidecar(cluster.app_id("server"), cluster.resources(pubsub.component(), store))
    client = cluster.sidecar(cluster.app_id("client"), cluster.resources(pubsub.component()))

    save(client, "k", {"n": 1}, store=name)
    reply = get(client, "k", store=name)
    assert reply.json() == {"n": 1}
    ops = [
        {"operation": "upsert", "request": {"key": "k2", "value": 2}},
        {"operation": "delete", "request": {"key": "k"}},
    ]
    done = client.post(f"/v1.0/state/{name}/transaction", json={"operations": ops})
    assert done.status_code == 204, done.text
    bulk = client.post(f"/v1.0/state/{name}/bulk", json={"keys": ["k", "k2"]}).json()
    assert bulk[0] == {"key": "k"} and bulk[1]["data"] == 2
    stale = client.post(f"/v1.0/state/{name}", json=[{"key": "k2", "value": 3, "etag": "999"}])
    assert stale.status_code == 409 and stale.json()["errorCode"] == "ERR_STATE_SAVE"


@pytest.mark.redis
def test_a_sidecar_shares_redis_state_with_dapr_s_layout(cluster: Cluster, redis_url: str) -> None:
    # Given Dapr's hello-world statestore.yaml on a Redis that a Dapr sidecar also writes to
    import redis

    host, _, port = redis_url.rpartition(":")
    raw = redis.Redis(host=host, port=int(port))
    app_id = cluster.app_id("nodeapp")
    store = component(
        "statestore",
        "state.redis",
        {"redisHost": redis_url, "redisPassword": "", "actorStateStore": "true"},
    )
    sidecar = cluster.sidecar(app_id, cluster.resources(store))
    try:
        # When Dapr wrote a key (its hash: data = JSON text, version = the etag)
        raw.hset(f"{app_id}||order", mapping={"data": '{"orderId":7}', "version": "3"})
        # Then omnibus reads it, with Dapr's etag
        reply = get(sidecar, "order")
        assert reply.status_code == 200 and reply.json() == {"orderId": 7}
        assert reply.headers["ETag"] == "3"
        # And what omnibus writes is a hash with exactly Dapr's fields
        save(sidecar, "order", {"orderId": 8})
        written = raw.hgetall(f"{app_id}||order")
        assert set(written) == {b"data", b"version"}
        assert json.loads(written[b"data"]) == {"orderId": 8} and written[b"version"] == b"4"
    finally:
        raw.delete(f"{app_id}||order")
        raw.close()
