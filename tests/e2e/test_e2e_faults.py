"""Faults with sidecars running: a broker outage, a full disk, SIGTERM with deliveries in flight.

Every scenario counts ids: whatever a publisher was told was stored (204) must reach the app.
"""

from __future__ import annotations

import contextlib
import errno
import signal
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.e2e.conftest import (
    RABBITMQ_URL,
    App,
    Cluster,
    PubSubKind,
    RestartableRedis,
    Sidecar,
    ThreadedProxy,
    _delete_rabbit_objects,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


# RabbitMQ's publish waits up to bus.rabbitmq._wire.PUBLISH_TIMEOUT (30 s) for a reconnect.
PUBLISH_WAIT = 45.0


def _try_publish(publisher: Sidecar, topic: str, n: int, payload: str) -> requests.Response:
    url = publisher.url(f"/v1.0/publish/pubsub/{topic}")
    return requests.post(url, json={"n": n, "payload": payload}, timeout=PUBLISH_WAIT)


def _assert_dapr_error(reply: requests.Response) -> None:
    assert reply.status_code >= 500, reply.text
    body: dict[str, Any] = reply.json()
    assert body["errorCode"].startswith("ERR_"), body
    assert body["message"], body


class Stream:
    """Publishes numbered events and remembers which ones the sidecar acknowledged with 204."""

    def __init__(self, publisher: Sidecar, topic: str, payload: str = "") -> None:
        self.publisher = publisher
        self.payload = payload
        self.topic = topic
        self.next = 0
        self.acknowledged: set[int] = set()

    def publish(self) -> requests.Response:
        n, self.next = self.next, self.next + 1
        reply = _try_publish(self.publisher, self.topic, n, self.payload)
        if reply.status_code == 204:
            self.acknowledged.add(n)
        return reply

    def publish_concurrently(self, count: int) -> list[requests.Response]:
        """``count`` publishes at once (an outage makes each wait for the broker)."""
        with ThreadPoolExecutor(count) as pool:
            return list(pool.map(lambda _: self.publish(), range(count)))

    def publish_ok(self, count: int) -> None:
        for _ in range(count):
            reply = self.publish()
            assert reply.status_code == 204, reply.text

    def delivered(self, app: App) -> set[int]:
        return {b["data"]["n"] for b in app.bodies("/in")}

    def wait_all_delivered(self, app: App, timeout: float = 30) -> None:
        wait_until(
            lambda: self.acknowledged <= self.delivered(app),
            timeout,
            f"every acknowledged event delivered ({len(self.acknowledged)})",
        )


def _outage(
    cluster: Cluster, component: str, down: Callable[[], None], up: Callable[[], None]
) -> None:
    # Given a subscriber and a publisher sidecar, and a stream already flowing
    topic = cluster.topic("fault")
    app = cluster.app([{"pubsubname": "pubsub", "topic": topic, "route": "/in"}])
    resources = cluster.resources(component)
    subscriber = cluster.sidecar(cluster.app_id("sub"), resources, app=app)
    publisher = cluster.sidecar(cluster.app_id("pub"), resources)
    stream = Stream(publisher, topic)
    stream.publish_ok(50)
    stream.wait_all_delivered(app)
    # When the broker goes away, publishes fail with a Dapr error body
    down()
    for reply in stream.publish_concurrently(4):
        _assert_dapr_error(reply)
    # And once it is back, publishing succeeds again on the same sidecars
    up()
    wait_until(lambda: stream.publish().status_code == 204, 30, "publishing to resume")
    stream.publish_ok(50)
    # Then the subscriber resumed by itself and every acknowledged event was delivered
    stream.wait_all_delivered(app)
    for sidecar in (subscriber, publisher):
        assert sidecar.popen.poll() is None, sidecar.output()[-2000:]
    assert len(stream.acknowledged) >= 101


@pytest.mark.redis
def test_redis_restarted_mid_stream(cluster: Cluster, restartable_redis: RestartableRedis) -> None:
    from tests.e2e.conftest import component

    document = component("pubsub", "pubsub.redis", {"redisHost": restartable_redis.url})
    _outage(cluster, document, restartable_redis.stop, restartable_redis.start)


@pytest.mark.rabbitmq
def test_rabbitmq_connection_cut(cluster: Cluster, rabbitmq_proxy: ThreadedProxy) -> None:
    from tests.e2e.conftest import component

    cluster.cleanups.append(lambda: _delete_rabbit_objects(cluster))
    url = RABBITMQ_URL.replace(":5672/", f":{rabbitmq_proxy.port}/")
    document = component("pubsub", "pubsub.rabbitmq", {"connectionString": url})
    _outage(cluster, document, rabbitmq_proxy.down, rabbitmq_proxy.up)


def _fill(directory: Path) -> Path:
    """Write a file in ``directory`` until the disk is full; that file."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as out:
        try:
            while True:
                out.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return filler


def _integrity(database: Path) -> str:
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])


def test_sqlite_full_disk(cluster: Cluster, small_disk: Path) -> None:
    # Given sidecars on the default sqlite bus, with OMNIBUS_HOME (and bus.db) on a 2 MiB tmpfs
    cluster.home = small_disk
    topic = cluster.topic("full")
    app = cluster.app([{"pubsubname": "pubsub", "topic": topic, "route": "/in"}])
    subscriber = cluster.sidecar(cluster.app_id("sub"), None, app=app)
    publisher = cluster.sidecar(cluster.app_id("pub"), None)
    # (small events and few of them: SQLite's WAL grows to ~4 MB before its first checkpoint,
    # so on this disk the space freed at the end must outlast the rest of the test)
    stream = Stream(publisher, topic, payload="x" * 200)
    stream.publish_ok(10)
    stream.wait_all_delivered(app)
    # When the disk fills up, publishes fail with a Dapr error body and the sidecar keeps serving
    filler = _fill(small_disk)
    wait_until(lambda: stream.publish().status_code != 204, 30, "a publish to fail")
    for reply in [stream.publish() for _ in range(3)]:
        _assert_dapr_error(reply)
    assert publisher.get("/v1.0/healthz").status_code == 204
    # And once space is freed, publishing resumes on the same sidecars
    filler.unlink()
    wait_until(lambda: stream.publish().status_code == 204, 30, "publishing to resume")
    stream.publish_ok(10)
    # Then the file is intact and every acknowledged event was delivered
    stream.wait_all_delivered(app)
    assert _integrity(small_disk / "bus.db") == "ok"
    for sidecar in (subscriber, publisher):
        assert sidecar.popen.poll() is None, sidecar.output()[-2000:]


EVENTS = 40


def test_sigterm_with_deliveries_in_flight(cluster: Cluster, pubsub: PubSubKind) -> None:
    # Given a slow app behind a subscriber sidecar with a 2 s graceful shutdown and at most 4
    # deliveries at once (so the stream is still under way when the signal comes)
    grace = 2.0
    topic = cluster.topic("term")
    app = cluster.app(
        [{"pubsubname": "pubsub", "topic": topic, "route": "/in"}], script={"/in": "SLOW400"}
    )
    resources = cluster.resources(pubsub.component(processingTimeout="2s"))
    app_id = cluster.app_id("sub")
    args = ["--dapr-graceful-shutdown-seconds", str(grace), "--app-max-concurrency", "4"]
    subscriber = cluster.sidecar(app_id, resources, app=app, args=args)
    publisher = cluster.sidecar(cluster.app_id("pub"), resources)
    publisher.publish_bulk(topic, [{"n": n} for n in range(EVENTS)])
    wait_until(lambda: len(app.received("/in")) >= 3, what="deliveries under way")
    # When the subscriber sidecar gets SIGTERM with deliveries in flight
    started = {b["data"]["n"] for b in app.bodies("/in")}
    began = time.monotonic()
    code = subscriber.stop(signal.SIGTERM, timeout=grace + 10)
    elapsed = time.monotonic() - began
    # Then it exits cleanly within the grace period (plus the interpreter's own exit)
    assert code == 0, subscriber.output()[-2000:]
    assert elapsed < grace + 2.5, f"took {elapsed:.1f}s to stop"
    assert len(app.received("/in")) < EVENTS, "the stream had ended before the SIGTERM"
    # And after a restart every event is delivered, those in flight at the SIGTERM finished once
    cluster.sidecar(app_id, resources, app=app, args=args, port=subscriber.port)
    wait_until(
        lambda: set(range(EVENTS)) <= {b["data"]["n"] for b in app.bodies("/in")},
        30,
        f"all {EVENTS} events",
    )
    counts = Counter(b["data"]["n"] for b in app.bodies("/in"))
    assert all(counts[n] == 1 for n in started), {n: counts[n] for n in started}
