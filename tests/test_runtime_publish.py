"""Publish coalescing, CloudEvent helpers and CEL routing of the sidecar."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from bus.errors import BrokerClosed, ConfigError, InvalidArgument
from bus.memory import MemoryBroker
from bus.message import Message
from components.specs import RouteRule, Routes
from runtime.pubsub.cloudevents import (
    EventAttributes,
    has_expired,
    new_envelope,
    new_event_id,
    raw_envelope,
)
from runtime.pubsub.publisher import Publisher
from runtime.pubsub.routing import Router, RoutingError
from tests.conftest import MakeBroker


class CountingBroker(MemoryBroker):
    """A memory broker that records the size of every publish call and can be slowed down."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def _publish(self, topic: str, batch: Sequence[Message]) -> None:
        self.calls.append(len(batch))
        await self.gate.wait()
        await super()._publish(topic, batch)


async def test_concurrent_publishes_to_a_topic_share_broker_calls() -> None:
    broker = CountingBroker()
    await broker.connect()
    publisher = Publisher(broker)
    broker.gate.clear()  # the first call stays in flight while the others queue up
    first = asyncio.create_task(publisher.publish("t", [Message(b"0")]))
    await asyncio.sleep(0.01)
    rest = [
        asyncio.create_task(publisher.publish("t", [Message(str(i).encode())]))
        for i in range(1, 50)
    ]
    await asyncio.sleep(0.01)
    broker.gate.set()
    await asyncio.gather(first, *rest)
    assert broker.calls == [1, 49]
    held = await broker.browse("t")
    assert [m.data for m in held] == [str(i).encode() for i in range(50)]
    await broker.close()


async def test_batches_overlap_up_to_max_in_flight() -> None:
    broker = CountingBroker()
    await broker.connect()
    publisher = Publisher(broker, max_in_flight=2)
    broker.gate.clear()  # every call stays in flight until the gate opens

    async def wave(start: int, count: int) -> list[asyncio.Task[None]]:
        tasks = [
            asyncio.create_task(publisher.publish("t", [Message(str(i).encode())]))
            for i in range(start, start + count)
        ]
        await asyncio.sleep(0.01)
        return tasks

    tasks = await wave(0, 1)
    tasks += await wave(1, 10)
    assert broker.calls == [1, 10]  # the second batch did not wait for the first
    tasks += await wave(11, 10)
    assert broker.calls == [1, 10]  # two in flight: the third batch waits
    broker.gate.set()
    await asyncio.gather(*tasks)
    assert broker.calls == [1, 10, 10]
    held = await broker.browse("t")
    assert sorted(int(m.data) for m in held) == list(range(21))
    await publisher.drain()
    await broker.close()


async def test_a_failed_batch_fails_each_of_its_callers() -> None:
    broker = CountingBroker()
    await broker.connect()
    publisher = Publisher(broker)
    await broker.close()
    results = await asyncio.gather(
        *(publisher.publish("t", [Message(b"x")]) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, BrokerClosed) for r in results)
    await publisher.drain()


def test_event_ids_are_distinct_version_4_uuids() -> None:
    ids = [new_event_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    for event_id in ids[:500]:
        parsed = uuid.UUID(event_id)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, event_id)


def test_envelope_expiration_and_has_expired() -> None:
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    _, data = new_envelope(
        b"x",
        "text/plain",
        topic="t",
        pubsubname="p",
        source="a",
        attrs=EventAttributes(ttl_seconds=10),
        now=now,
    )
    event = orjson.loads(data)
    assert event["expiration"] == "2026-01-01T12:00:10Z"
    assert not has_expired(event, now + timedelta(seconds=9))
    assert has_expired(event, now + timedelta(seconds=11))
    assert not has_expired({"expiration": "garbage"}, now)


def test_raw_envelope_carries_bytes_as_base64_and_the_stable_id() -> None:
    event = raw_envelope(b"\x00\x01", event_id="m1", topic="t", pubsubname="p", metadata={})
    assert event["id"] == "m1"
    assert event["data_base64"] == "AAE="
    assert event["datacontenttype"] == "application/octet-stream"


def test_router_first_match_wins_else_default() -> None:
    router = Router(
        Routes(
            rules=(
                RouteRule('event.type == "widget"', "/widgets"),
                RouteRule("event.data.amount > 10", "/big"),
                RouteRule("event.data.amount > 5", "/medium"),
            ),
            default="/other",
        )
    )
    assert router.route({"type": "widget", "data": {"amount": 100}}) == "/widgets"
    assert router.route({"type": "order", "data": {"amount": 100}}) == "/big"
    assert router.route({"type": "order", "data": {"amount": 6}}) == "/medium"
    assert router.route({"type": "order", "data": {"amount": 1}}) == "/other"
    assert Router(Routes(rules=(RouteRule("event.x == 1", "/x"),))).route({"x": 2}) is None


def test_router_rejects_bad_expressions_and_non_booleans() -> None:
    with pytest.raises(ConfigError, match="not a valid CEL expression"):
        Router(Routes(rules=(RouteRule("event.type ==", "/x"),)))
    router = Router(Routes(rules=(RouteRule("event.data", "/x"),)))
    with pytest.raises(RoutingError):
        router.route({"data": 3})
    with pytest.raises(RoutingError):
        Router(Routes(rules=(RouteRule("event.missing.field == 1", "/x"),))).route({})


class PickyBroker(CountingBroker):
    """Refuses, as invalid, any call holding a message whose body is ``bad``; records keys."""

    def __init__(self) -> None:
        super().__init__()
        self.keys: list[set[str]] = []

    async def _publish(self, topic: str, batch: Sequence[Message]) -> None:
        self.keys.append({m.metadata.get("routingKey", "") for m in batch})
        if any(m.data == b"bad" for m in batch):
            self.calls.append(len(batch))
            raise InvalidArgument("this broker refuses bad messages")
        await super()._publish(topic, batch)


async def test_a_refused_message_fails_only_its_own_caller() -> None:
    broker = PickyBroker()
    await broker.connect()
    publisher = Publisher(broker)
    broker.gate.clear()
    first = asyncio.create_task(publisher.publish("t", [Message(b"0")]))
    await asyncio.sleep(0.01)
    bodies = [b"1", b"2", b"bad", b"3", b"4"]
    rest = [asyncio.create_task(publisher.publish("t", [Message(body)])) for body in bodies]
    await asyncio.sleep(0.01)
    broker.gate.set()
    results = await asyncio.gather(first, *rest, return_exceptions=True)
    assert [type(r).__name__ for r in results] == ["NoneType"] * 3 + ["InvalidArgument"] + [
        "NoneType"
    ] * 2
    assert broker.calls[:2] == [1, 5]  # they did share a call, the refused one
    assert sorted(m.data for m in await broker.browse("t")) == [b"0", b"1", b"2", b"3", b"4"]
    await broker.close()


async def test_messages_with_different_routing_keys_never_share_a_call() -> None:
    broker = PickyBroker()
    await broker.connect()
    publisher = Publisher(broker)
    broker.gate.clear()
    first = asyncio.create_task(publisher.publish("t", [Message(b"0")]))
    await asyncio.sleep(0.01)
    rest = [
        asyncio.create_task(
            publisher.publish("t", [Message(b"%d" % i, metadata={"routingKey": "ab"[i % 2]})])
        )
        for i in range(10)
    ]
    mixed = [Message(b"m%d" % i, metadata={"routingKey": "xyz"[i % 3]}) for i in range(6)]
    bulk = asyncio.create_task(publisher.publish("t", mixed))
    await asyncio.sleep(0.01)
    broker.gate.set()
    await asyncio.gather(first, *rest, bulk)
    assert all(len(keys) == 1 for keys in broker.keys), broker.keys
    assert len(await broker.browse("t")) == 17
    await broker.close()


async def test_each_publish_fares_as_it_would_alone_on_every_backend(
    make_broker: MakeBroker, topic: str
) -> None:
    """ttlInSeconds=0 is refused by RabbitMQ and taken elsewhere: batched, it fails no one else."""
    broker = await make_broker()
    publisher = Publisher(broker)
    alone = await asyncio.gather(
        publisher.publish(topic, [Message(b"probe", metadata={"ttlInSeconds": "0"})]),
        return_exceptions=True,
    )
    rounds = []
    for _ in range(3):
        metadata = [{"ttlInSeconds": "0"} if i == 4 else {} for i in range(10)]
        rounds.append(
            await asyncio.gather(
                *(
                    publisher.publish(topic, [Message(b"%d" % i, metadata=m)])
                    for i, m in enumerate(metadata)
                ),
                return_exceptions=True,
            )
        )
    for results in rounds:
        assert type(results[4]) is type(alone[0])
        assert all(r is None for i, r in enumerate(results) if i != 4), results
    await publisher.drain()
