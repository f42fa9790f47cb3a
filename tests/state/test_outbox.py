"""The outbox of the change feed, written once and run on every store (see conftest).

A write with a journal records its change atomically with the write; the relay publishes the
records in commit order and removes them; what a crashed relay left is published by the next;
a publish failure keeps the records until the pubsub is back; relays of one store take turns.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from bus.backoff import Backoff
from bus.errors import ConfigError
from bus.message import Message
from state.errors import BulkError, ETagMismatch
from state.feed import CHANGE_EVENT_TYPE, ChangeFeed, ChangeRelay, FeedSettings, RelayTiming
from state.memory import MemorySettings, MemoryStore
from state.postgresql import PostgresStore
from state.sqlite import SqliteSettings, SqliteStore
from state.store import (
    Concurrency,
    DeleteRequest,
    Journal,
    RecordedChange,
    SetRequest,
    StateStore,
)
from tests.state.conftest import drop_postgres_tables, postgres_settings

Key = Callable[[str], str]
Reopen = Callable[[], Awaitable[StateStore]]
FAST = RelayTiming(
    poll=0.05, lease=0.5, backoff=Backoff(initial=0.02, maximum=0.1, jitter=0.01), grace=2.0
)


class Topic:
    """The pubsub of these tests: keeps every event it is given, and can be taken down."""

    def __init__(self) -> None:
        self.events: list[dict[str, object]] = []
        self.down = False

    async def publish(self, topic: str, batch: Sequence[Message]) -> None:
        if self.down:
            raise ConnectionError("pubsub down")
        for message in batch:
            event = orjson.loads(message.data)
            assert event["id"] == message.id and event["topic"] == topic
            self.events.append(event)

    def keys(self) -> list[tuple[object, object]]:
        """``(operation, key)`` of every event, in publish order."""
        return [(e["data"]["operation"], e["data"]["key"]) for e in self.events]  # type: ignore[index]


def journal(name: str) -> Journal:
    return Journal("orders", name)


def upsert(key: Key, name: str, value: bytes = b'"v"', **options: object) -> SetRequest:
    return SetRequest(key(name), value, journal=journal(name), **options)  # type: ignore[arg-type]


def delete(key: Key, name: str, **options: object) -> DeleteRequest:
    return DeleteRequest(key(name), journal=journal(name), **options)  # type: ignore[arg-type]


async def recorded(store: StateStore, relay: str = "reader") -> list[RecordedChange]:
    """What the store holds now (taking the lease for ``relay``)."""
    found = await store.claim_changes(relay, lease=5, limit=1000)
    assert found is not None, "another relay holds the lease"
    return found


def relay_of(store: StateStore, topic: Topic, timing: RelayTiming = FAST) -> ChangeRelay:
    feed = ChangeFeed(
        store.name, FeedSettings("pubsub", "changes"), topic, source="orders", timing=timing
    )
    return ChangeRelay(store, feed)


async def until(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


# -- recording -----------------------------------------------------------------------------------


async def test_a_journaled_save_records_its_change_with_the_new_etag(
    store: StateStore, key: Key
) -> None:
    await store.set(SetRequest(key("plain"), b"1"))  # no journal: nothing recorded
    request = upsert(key, "a", b'{"n":1}')
    before = datetime.now(UTC)
    etag = await store.set(request)
    [change] = await recorded(store)
    assert (change.operation, change.key, change.app_id) == ("upsert", "a", "orders")
    assert (change.etag, change.value) == (etag, b'{"n":1}')
    assert request.journal is not None and change.event_id == request.journal.event_id
    assert before - timedelta(seconds=2) < change.time < datetime.now(UTC) + timedelta(seconds=2)


async def test_a_journaled_delete_is_recorded_even_of_an_absent_key(
    store: StateStore, key: Key
) -> None:
    etag = await store.set(SetRequest(key("d"), b"1"))
    await store.delete(delete(key, "d", etag=etag))
    await store.delete(delete(key, "never-there"))
    changes = await recorded(store)
    assert [(c.operation, c.key, c.etag, c.value) for c in changes] == [
        ("delete", "d", None, None),
        ("delete", "never-there", None, None),
    ]


async def test_a_failed_check_records_nothing(store: StateStore, key: Key) -> None:
    stale = await store.set(SetRequest(key("k"), b"1"))
    await store.set(SetRequest(key("k"), b"2"))
    with pytest.raises(ETagMismatch):
        await store.set(upsert(key, "k", etag=stale))
    with pytest.raises(ETagMismatch):
        await store.set(upsert(key, "k", concurrency=Concurrency.FIRST_WRITE))
    with pytest.raises(ETagMismatch):
        await store.delete(delete(key, "k", etag=stale))
    with pytest.raises(ETagMismatch):  # the first operation would succeed: rolled back too
        await store.transact([upsert(key, "other"), upsert(key, "k", etag=stale)])
    assert await recorded(store) == []
    assert await store.get(key("other")) is None


async def test_a_transaction_records_all_its_operations_in_order(
    store: StateStore, key: Key
) -> None:
    await store.set(SetRequest(key("b"), b"1"))
    await store.transact(
        [upsert(key, "a", b"1"), delete(key, "b"), upsert(key, "a", b"2"), upsert(key, "c", b"3")]
    )
    changes = await recorded(store)
    assert [(c.operation, c.key, c.value) for c in changes] == [
        ("upsert", "a", b"1"),
        ("delete", "b", None),
        ("upsert", "a", b"2"),
        ("upsert", "c", b"3"),
    ]
    a, c = await store.get(key("a")), await store.get(key("c"))
    assert a is not None and c is not None
    assert changes[2].etag == a.etag and changes[3].etag == c.etag
    assert changes[0].etag not in (None, a.etag)  # each upsert reports the etag it made
    assert len({change.event_id for change in changes}) == 4


async def test_a_bulk_save_records_the_saves_that_succeeded(store: StateStore, key: Key) -> None:
    stale = await store.set(SetRequest(key("x"), b"1"))
    await store.set(SetRequest(key("x"), b"2"))
    with pytest.raises(BulkError):
        await store.bulk_set([upsert(key, "ok1"), upsert(key, "x", etag=stale), upsert(key, "ok2")])
    changes = await recorded(store)
    assert sorted(c.key for c in changes) == ["ok1", "ok2"]
    for change in changes:
        item = await store.get(key(change.key))
        assert item is not None and item.etag == change.etag


# -- claiming and forgetting ---------------------------------------------------------------------


async def test_the_lease_keeps_other_relays_out_until_it_lapses_or_is_released(
    store: StateStore, key: Key
) -> None:
    await store.set(upsert(key, "a"))
    assert len(await store.claim_changes("one", lease=1.0, limit=10) or []) == 1
    assert await store.claim_changes("two", lease=1.0, limit=10) is None
    await asyncio.sleep(1.2)  # the lease of "one" lapses
    assert len(await store.claim_changes("two", lease=30, limit=10) or []) == 1
    assert await store.claim_changes("one", lease=30, limit=10) is None
    await store.release_changes("one")  # not its lease: nothing happens
    assert await store.claim_changes("one", lease=30, limit=10) is None
    await store.release_changes("two")
    assert len(await store.claim_changes("one", lease=30, limit=10) or []) == 1


async def test_forget_removes_only_the_records_given(store: StateStore, key: Key) -> None:
    for name in ("a", "b", "c"):
        await store.set(upsert(key, name))
    first = await recorded(store)
    await store.forget_changes(first[:2])
    await store.set(upsert(key, "d"))
    await store.forget_changes(first[:2])  # already gone: no error, nothing else removed
    assert [c.key for c in await recorded(store)] == ["c", "d"]
    limited = await store.claim_changes("reader", lease=5, limit=1)
    assert [c.key for c in limited or []] == ["c"]


# -- the relay -----------------------------------------------------------------------------------


async def test_the_relay_publishes_in_commit_order_and_removes_what_it_published(
    store: StateStore, key: Key
) -> None:
    topic = Topic()
    relay = relay_of(store, topic)
    await relay.start()
    try:
        etag = await store.set(upsert(key, "a", b'{"n":1}'))
        await store.delete(delete(key, "a"))
        await store.transact([upsert(key, "b", b"\xff", is_binary=True), upsert(key, "c")])
        waiter = relay.wake()
        assert waiter is not None
        await waiter  # the pass after the writes has run: their events are out
        assert topic.keys() == [("upsert", "a"), ("delete", "a"), ("upsert", "b"), ("upsert", "c")]
        first = topic.events[0]
        assert first["type"] == CHANGE_EVENT_TYPE and first["subject"] == "a"
        assert first["data"] == {
            "store": store.name,
            "key": "a",
            "appId": "orders",
            "operation": "upsert",
            "etag": etag,
            "value": {"n": 1},
        }
        assert topic.events[2]["data"]["valueBase64"] == "/w=="  # type: ignore[index]
    finally:
        await relay.stop()
    assert await recorded(store) == []  # published records are gone; the lease was released


async def test_what_a_crashed_relay_left_is_published_by_the_next(
    store: StateStore, key: Key, reopen: Reopen
) -> None:
    # Given changes recorded, and claimed by a relay that died before it published them
    for name in ("a", "b", "c"):
        await store.set(upsert(key, name))
    claimed = await store.claim_changes("dead", lease=0.5, limit=10)
    assert claimed is not None and len(claimed) == 3
    await store.close()
    # When the store is opened again (a restarted sidecar) with a relay of its own
    topic = Topic()
    relay = relay_of(await reopen(), topic)
    await relay.start()
    try:
        # Then that relay publishes every record once the dead relay's lease has lapsed
        await until(lambda: len(topic.events) >= 3, "the records left behind")
        assert topic.keys() == [("upsert", "a"), ("upsert", "b"), ("upsert", "c")]
        assert [e["id"] for e in topic.events] == [c.event_id for c in claimed]
    finally:
        await relay.stop()


async def test_a_publish_failure_keeps_the_records_until_the_pubsub_is_back(
    store: StateStore, key: Key
) -> None:
    topic = Topic()
    topic.down = True
    relay = relay_of(store, topic)
    await relay.start()
    try:
        await store.set(upsert(key, "a"))
        waiter = relay.wake()
        assert waiter is not None
        await waiter  # a pass ran and failed
        assert topic.events == []
        assert relay.wake() is None  # backing off: a write does not wait for it
        kept = await store.claim_changes(relay.holder, lease=5, limit=10)
        assert [c.key for c in kept or []] == ["a"]
        await store.set(upsert(key, "b"))
        topic.down = False
        await until(lambda: len(topic.events) >= 2, "the events once the pubsub is back")
        assert topic.keys() == [("upsert", "a"), ("upsert", "b")]
    finally:
        await relay.stop()
    assert await recorded(store) == []


async def test_two_relays_of_one_store_publish_each_change_once_in_order(
    store: StateStore, key: Key, reopen: Reopen
) -> None:
    # Given two sidecars serving one store, each with its relay
    other = await reopen()
    topic = Topic()
    steady = RelayTiming(poll=0.05, lease=30, backoff=FAST.backoff)  # no lease lapses here
    relays = [relay_of(store, topic, steady), relay_of(other, topic, steady)]
    for relay in relays:
        await relay.start()
    try:
        # When both take writes, one after the other, and wake their relays
        names = [f"k{i}" for i in range(40)]
        for i, name in enumerate(names):
            await (store, other)[i % 2].set(upsert(key, name))
            for relay in relays:
                relay.wake()
        # Then every change is published once, in commit order, by one relay
        await until(lambda: len(topic.events) >= len(names), "every change")
        await asyncio.sleep(0.3)  # time for a duplicate to show, were there one
        assert [k for _, k in topic.keys()] == names
    finally:
        for relay in relays:
            await relay.stop()


# -- expiry and the relay's timings --------------------------------------------------------------


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
async def expiring(
    request: pytest.FixtureRequest, tmp_path: Path, store_name: str
) -> AsyncIterator[StateStore]:
    """A store with a change feed (it records expiries) whose purge the test runs itself."""
    made: StateStore
    if request.param == "memory":
        made = MemoryStore(store_name, MemorySettings(cleanup_interval=0, record_expiry=True))
    elif request.param == "sqlite":
        path = str(tmp_path / "state.db")
        made = SqliteStore(store_name, SqliteSettings(path, cleanup_interval=0, record_expiry=True))
    else:
        if not request.getfixturevalue("postgres_reachable"):
            pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432")
        made = PostgresStore(store_name, postgres_settings(record_expiry=True))
    async with made as store:
        yield store
        if isinstance(store, PostgresStore):
            await drop_postgres_tables(store)


async def test_a_purged_expired_key_records_one_expire_and_a_rewritten_key_none(
    expiring: StateStore, key: Key
) -> None:
    # Given a key saved with a TTL, and one whose TTL was cleared by a save before the purge
    etag = await expiring.set(SetRequest(key("gone"), b"1", ttl=1))
    await expiring.set(SetRequest(key("kept"), b"1", ttl=1))
    await expiring.set(SetRequest(key("kept"), b"2"))
    await asyncio.sleep(1.2)
    # When the store purges its expired rows
    await expiring.purge_expired()  # type: ignore[attr-defined]
    # Then only the expired key has a record: an expire with the etag it had, no value
    changes = await recorded(expiring)
    app = key("").removesuffix("||")
    assert [(c.operation, c.app_id, c.key, c.etag, c.value) for c in changes] == [
        ("expire", app, "gone", etag, None)
    ]
    assert await expiring.get(key("kept")) is not None
    await expiring.purge_expired()  # type: ignore[attr-defined]
    assert len(await recorded(expiring)) == 1  # a second purge finds nothing more


async def test_the_relay_publishes_an_expire_event(expiring: StateStore, key: Key) -> None:
    await expiring.set(SetRequest(key("gone"), b"1", ttl=1))
    await asyncio.sleep(1.2)
    await expiring.purge_expired()  # type: ignore[attr-defined]
    topic = Topic()
    relay = relay_of(expiring, topic)
    await relay.start()
    try:
        await until(lambda: len(topic.events) >= 1, "the expire event")
    finally:
        await relay.stop()
    assert topic.keys() == [("expire", "gone")]
    assert "value" not in topic.events[0]["data"]  # type: ignore[operator]


def test_the_relay_timings_are_read_from_the_metadata() -> None:
    names = {"changeFeedPubsub": "p", "changeFeedTopic": "t"}
    assert FeedSettings.from_metadata("s", names) == FeedSettings("p", "t", 1.0, 10.0)
    timed = FeedSettings.from_metadata(
        "s", {**names, "changeFeedPollInterval": "250ms", "CHANGEFEEDLEASE": "3s"}
    )
    assert timed == FeedSettings("p", "t", 0.25, 3.0)
    assert timed is not None
    feed = ChangeFeed("s", timed, Topic(), source="orders")
    assert (feed.timing.poll, feed.timing.lease) == (0.25, 3.0)
    assert FeedSettings.from_metadata("s", {**names, "changeFeedLease": "2000"}) == FeedSettings(
        "p", "t", 1.0, 2.0
    )


@pytest.mark.parametrize(
    ("timings", "complaint"),
    [
        ({"changeFeedPollInterval": "0s"}, "'changeFeedPollInterval': expected a positive"),
        ({"changeFeedPollInterval": "-1s"}, "'changeFeedPollInterval': expected a positive"),
        ({"changeFeedLease": "soon"}, "'changeFeedLease': expected a positive"),
        ({"changeFeedPollInterval": "5s", "changeFeedLease": "5s"}, "longer than"),
        ({"changeFeedLease": "500ms"}, "longer than"),
    ],
)
def test_bad_relay_timings_are_refused(timings: dict[str, str], complaint: str) -> None:
    metadata = {"changeFeedPubsub": "p", "changeFeedTopic": "t", **timings}
    with pytest.raises(ConfigError, match=complaint):
        FeedSettings.from_metadata("s", metadata)
