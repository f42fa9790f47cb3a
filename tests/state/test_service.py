"""The state service on the bus: in-process and remote calls, scopes, prefixes, errors, the feed.

Two :class:`MemoryBroker` objects on one hub stand for two sidecars sharing a bus: ``serving``
loaded the store (an in-memory one), ``remote`` did not.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import orjson
import pytest

from bus.backoff import Backoff
from bus.memory import MemoryBroker, MemoryHub
from bus.message import Message, Outcome
from bus.options import SubscriptionOptions
from state.errors import BulkError, ETagInvalid, ETagMismatch, InvalidQuery, NotSupported
from state.feed import CHANGE_EVENT_TYPE, ChangeFeed, FeedSettings, RelayTiming
from state.keys import InvalidKey, KeyStrategy
from state.memory import MemoryStore
from state.service import StateClient, StateService, StoreConfig, state_topic
from state.store import DeleteRequest, Feature, SetRequest
from state.wire import (
    BulkGet,
    Delete,
    Get,
    Query,
    Save,
    StoreNotFound,
    Transact,
)

STORE = "statestore"
FAST = RelayTiming(poll=0.05, lease=1.0, backoff=Backoff(initial=0.02, maximum=0.1, jitter=0.01))


class _NoTransactions(MemoryStore):
    """Could transact and query, but does not advertise either: the service refuses both."""

    features = frozenset({Feature.ETAG})


@dataclass
class Bus:
    hub: MemoryHub
    serving: MemoryBroker
    remote: MemoryBroker
    store: MemoryStore


async def _serve(bus: Bus, config: StoreConfig, feed: ChangeFeed | None = None) -> StateClient:
    service = StateService(bus.store, config, feed)
    client = StateClient("orders", bus.serving, [service])
    await client.start()
    return client


@pytest.fixture
async def bus() -> AsyncIterator[Bus]:
    hub = MemoryHub()
    async with MemoryBroker(hub) as serving, MemoryBroker(hub) as remote:
        yield Bus(hub, serving, remote, MemoryStore(STORE))


def save(key: str, value: object, **kwargs: object) -> Save:
    return Save((SetRequest(key, orjson.dumps(value), **kwargs),))  # type: ignore[arg-type]


async def test_a_local_store_is_called_in_process_with_the_app_prefix(bus: Bus) -> None:
    client = await _serve(bus, StoreConfig(keys=KeyStrategy(store=STORE)))
    try:
        await client.call(STORE, save("k", {"a": 1}))
        item = await client.get(STORE, "k")
        assert item is not None and item.key == "k" and orjson.loads(item.value) == {"a": 1}
        # stored under Dapr's default prefix
        stored = await bus.store.get("orders||k")
        assert stored is not None and stored.etag == item.etag
    finally:
        await client.close()


async def test_a_sidecar_without_the_store_reaches_it_over_the_bus(bus: Bus) -> None:
    server = await _serve(bus, StoreConfig(keys=KeyStrategy(store=STORE)))
    remote = StateClient("billing", bus.remote)
    try:
        big = b"x" * 100_000
        await remote.call(STORE, save("k", {"blob": big.decode()}))
        item = await remote.get(STORE, "k")
        assert item is not None and item.key == "k"
        assert orjson.loads(item.value) == {"blob": big.decode()}
        # the remote app's keys carry its own prefix, apart from the serving app's
        assert await server.get(STORE, "k") is None
        assert await bus.store.get("billing||k") is not None
        assert await remote.call(STORE, Get("absent")) is None
    finally:
        await server.close()


async def test_every_operation_travels_the_bus(bus: Bus) -> None:
    server = await _serve(bus, StoreConfig(keys=KeyStrategy(store=STORE)))
    remote = StateClient("billing", bus.remote)
    try:
        await remote.call(STORE, save("a", 1))
        await remote.call(
            STORE,
            Transact(
                (
                    SetRequest("b", b'{"n": 2}', ttl=60),
                    DeleteRequest("a"),
                    SetRequest("c", b'{"n": 3}'),
                )
            ),
        )
        entries = await remote.call(STORE, BulkGet(("a", "b", "c")))
        assert isinstance(entries, list)
        assert [(e.key, e.item is not None) for e in entries] == [
            ("a", False),
            ("b", True),
            ("c", True),
        ]
        b_item = entries[1].item
        assert b_item is not None and b_item.key == "b" and b_item.expires_at is not None
        result = await remote.call(STORE, Query({"filter": {"EQ": {"n": 3}}}))
        assert result is not None and not isinstance(result, list)
        assert [i.key for i in result.results] == ["c"]  # type: ignore[union-attr]
        await remote.call(STORE, Delete(DeleteRequest("c")))
        assert await remote.get(STORE, "c") is None
    finally:
        await server.close()


async def test_no_server_is_store_not_found_at_once(bus: Bus) -> None:
    remote = StateClient("billing", bus.remote, timeout=60)
    with pytest.raises(StoreNotFound):
        await remote.call(STORE, Get("k"))
    with pytest.raises(StoreNotFound):
        await StateClient("billing", None).call(STORE, Get("k"))
    with pytest.raises(StoreNotFound):
        await remote.call("bad name!", Get("k"))


async def test_scopes_refuse_other_apps_as_not_found(bus: Bus) -> None:
    server = await _serve(bus, StoreConfig(scopes=("orders",), keys=KeyStrategy(store=STORE)))
    try:
        await server.call(STORE, save("k", 1))  # the scoped app itself
        with pytest.raises(StoreNotFound):
            await StateClient("billing", bus.remote).call(STORE, Get("k"))
        assert await StateClient("orders", bus.remote).get(STORE, "k") is not None
    finally:
        await server.close()


@pytest.mark.parametrize("remote", [False, True], ids=["local", "remote"])
async def test_errors_come_back_as_their_own_class(bus: Bus, remote: bool) -> None:
    server = await _serve(bus, StoreConfig(keys=KeyStrategy(store=STORE)))
    client = StateClient("orders", bus.remote) if remote else server
    try:
        await client.call(STORE, save("k", 1))
        with pytest.raises(ETagMismatch):
            await client.call(STORE, save("k", 2, etag="999"))
        with pytest.raises(ETagInvalid):
            await client.call(STORE, save("k", 2, etag="not-a-number"))
        with pytest.raises(InvalidKey):
            await client.call(STORE, Get("a||b"))
        with pytest.raises(InvalidQuery):
            await client.call(STORE, Query({"filter": {"NOPE": 1}}))
        two = Save((SetRequest("x", b"1"), SetRequest("k", b"2", etag="999")))
        with pytest.raises(BulkError) as caught:
            await client.call(STORE, two)
        assert [(k, type(e)) for k, e in caught.value.errors] == [("k", ETagMismatch)]
    finally:
        await server.close()


async def test_transactions_on_a_store_without_them_are_not_supported(bus: Bus) -> None:
    bus.store = _NoTransactions(STORE)
    server = await _serve(bus, StoreConfig(keys=KeyStrategy(store=STORE)))
    try:
        remote = StateClient("x", bus.remote)
        with pytest.raises(NotSupported):
            await remote.call(STORE, Transact((DeleteRequest("k"),)))
        with pytest.raises(NotSupported):
            await remote.call(STORE, Query({}))
    finally:
        await server.close()


async def test_a_malformed_bus_request_is_an_error_reply(bus: Bus) -> None:
    server = await _serve(bus, StoreConfig(keys=KeyStrategy(store=STORE)))
    try:
        with pytest.raises(Exception) as caught:
            await bus.remote.request(state_topic(STORE), Message(data=b"garbage"), 5)
        assert getattr(caught.value, "code", None) == "INVALID_ARGUMENT"
    finally:
        await server.close()


async def test_the_change_feed_publishes_every_committed_change(bus: Bus) -> None:
    events: list[dict[str, object]] = []

    async def collect(message: Message) -> Outcome:
        events.append(orjson.loads(message.data))
        return Outcome.SUCCESS

    settings = FeedSettings("pubsub", "changes")
    feed = ChangeFeed(STORE, settings, bus.serving, source="orders")
    await bus.remote.subscribe("changes", collect, SubscriptionOptions(group="watcher"))
    server = await _serve(bus, StoreConfig(keys=KeyStrategy(store=STORE)), feed)
    try:
        await server.call(STORE, save("a", {"v": 1}))
        with pytest.raises(ETagMismatch):  # a failed change publishes nothing
            await server.call(STORE, save("a", {"v": 9}, etag="12345"))
        await server.call(STORE, Transact((SetRequest("b", b"2"), DeleteRequest("a"))))
        await StateClient("billing", bus.remote).call(STORE, Delete(DeleteRequest("z")))
        await _until(lambda: len(events) >= 4)
        data = [e["data"] for e in events]
        assert all(e["type"] == CHANGE_EVENT_TYPE for e in events)
        assert len({e["id"] for e in events}) == 4
        assert [(d["operation"], d["key"], d["appId"]) for d in data] == [  # type: ignore[index]
            ("upsert", "a", "orders"),
            ("upsert", "b", "orders"),
            ("delete", "a", "orders"),
            ("delete", "z", "billing"),
        ]
        first = await bus.store.get("orders||b")
        assert first is not None and data[1]["etag"] == first.etag  # type: ignore[index]
        assert data[0]["value"] == {"v": 1}  # type: ignore[index]
    finally:
        await server.close()


def test_feed_settings_read_both_vocabularies() -> None:
    ours = FeedSettings.from_metadata(STORE, {"changeFeedPubsub": "p", "changeFeedTopic": "t"})
    dapr = FeedSettings.from_metadata(
        STORE, {"outboxPublishPubsub": "p", "outboxPublishTopic": "t"}
    )
    assert ours == dapr == FeedSettings("p", "t")
    assert FeedSettings.from_metadata(STORE, {}) is None
    with pytest.raises(Exception, match="changeFeedTopic"):
        FeedSettings.from_metadata(STORE, {"changeFeedPubsub": "p"})


async def _until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


class _Pubsub:
    """A feed's pubsub that keeps the keys of the events it took, and can be taken down."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.down = False

    async def publish(self, topic: str, batch: Sequence[Message]) -> None:
        if self.down:
            raise ConnectionError("pubsub down")
        self.keys += [orjson.loads(m.data)["data"]["key"] for m in batch]


def _feed(pubsub: _Pubsub, ready: Callable[[], bool] = lambda: True) -> ChangeFeed:
    settings = FeedSettings("pubsub", "changes")
    return ChangeFeed(STORE, settings, pubsub, source="orders", timing=FAST, ready=ready)


async def test_a_change_answered_has_its_event_published_already(bus: Bus) -> None:
    pubsub = _Pubsub()
    server = await _serve(bus, StoreConfig(keys=KeyStrategy(store=STORE)), _feed(pubsub))
    try:
        await server.call(STORE, save("a", 1))
        assert pubsub.keys == ["a"]  # no wait: the answer came after the relay's pass
        await StateClient("billing", bus.remote).call(STORE, Delete(DeleteRequest("b")))
        assert pubsub.keys == ["a", "b"]
    finally:
        await server.close()


async def test_a_failed_feed_publish_does_not_fail_the_committed_write(bus: Bus) -> None:
    # Given a feed whose pubsub is down
    pubsub = _Pubsub()
    pubsub.down = True
    server = await _serve(bus, StoreConfig(keys=KeyStrategy(store=STORE)), _feed(pubsub))
    try:
        # When a save and a transaction are made, each answers success: the records guarantee
        # the events
        await server.call(STORE, save("k", 1))
        await server.call(STORE, Transact((SetRequest("t", b"2"),)))
        assert await bus.store.get("orders||k") is not None and pubsub.keys == []
        # Then the events go out, in order, once the pubsub is back
        pubsub.down = False
        await _until(lambda: len(pubsub.keys) >= 2)
        assert pubsub.keys == ["k", "t"]
    finally:
        await server.close()


async def test_the_feed_waits_for_its_pubsub_to_be_connected(bus: Bus) -> None:
    pubsub, connected = _Pubsub(), False
    feed = _feed(pubsub, ready=lambda: connected)
    server = await _serve(bus, StoreConfig(keys=KeyStrategy(store=STORE)), feed)
    try:
        await server.call(STORE, save("early", 1))  # answered without waiting for the feed
        await asyncio.sleep(0.2)
        assert pubsub.keys == []
        connected = True
        await _until(lambda: pubsub.keys == ["early"])
    finally:
        await server.close()


async def test_values_cross_the_bus_byte_for_byte(bus: Bus) -> None:
    server = await _serve(bus, StoreConfig(keys=KeyStrategy(store=STORE)))
    remote = StateClient("billing", bus.remote)
    try:
        raw = bytes(range(256)) * 3
        request = SetRequest("bin", raw, is_binary=True, content_type="application/octet-stream")
        await remote.call(STORE, Save((request, SetRequest("empty", b""))))
        item = await remote.get(STORE, "bin")
        assert item is not None and item.value == raw
        assert item.content_type == "application/octet-stream"
        empty = await remote.get(STORE, "empty")
        assert empty is not None and empty.value == b""
    finally:
        await server.close()
