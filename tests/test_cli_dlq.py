"""``omnibus dlq``: browsing and replaying dead letters, on the in-memory broker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import orjson
import pytest

from bus.errors import PublishError
from bus.memory import MemoryBroker, MemoryHub
from bus.message import Message
from runtime.cli.dlq import dead_letter_topic, preview, replay
from tests.conftest import MakeBroker


@pytest.fixture
async def broker() -> AsyncIterator[MemoryBroker]:
    async with MemoryBroker(MemoryHub()) as broker:
        yield broker


def event(order_id: int) -> bytes:
    return orjson.dumps(
        {"specversion": "1.0", "id": f"ev-{order_id}", "data": {"orderId": order_id}}
    )


async def dead_letters(broker: MemoryBroker, count: int) -> list[Message]:
    messages = [Message(data=event(i), metadata={"k": str(i)}) for i in range(count)]
    await broker.publish("orders.deadletter", messages)
    return messages


def test_dead_letter_topic() -> None:
    assert dead_letter_topic("orders") == "orders.deadletter"
    assert dead_letter_topic("orders", "poison") == "poison"


def test_preview_shows_the_cloudevent_data() -> None:
    assert preview(Message(data=event(7))) == '{"orderId":7}'
    assert preview(Message(data=b'{"specversion":"1.0","data":"plain\\ntext"}')) == "plain text"
    b64 = b'{"specversion":"1.0","data_base64":"AAEC"}'
    assert preview(Message(data=b64)) == "<base64> AAEC"
    assert preview(Message(data=b"raw bytes \xff")) == "raw bytes \ufffd"
    long = preview(Message(data=b"x" * 500), width=20)
    assert len(long) == 20 and long.endswith("…")


async def test_replay_republishes_in_order_and_removes(broker: MemoryBroker) -> None:
    # Given three dead letters
    originals = await dead_letters(broker, 3)

    # When they are replayed
    result = await replay(broker, "orders", source="orders.deadletter", limit=100, idle=0.2)

    # Then the topic has the same bytes and metadata, in order, and the dead-letter topic is empty
    assert result.replayed == 3 and result.error is None
    replayed = await broker.browse("orders")
    assert [m.data for m in replayed] == [m.data for m in originals]
    assert [dict(m.metadata) for m in replayed] == [dict(m.metadata) for m in originals]
    assert await broker.browse("orders.deadletter") == []
    again = await replay(broker, "orders", source="orders.deadletter", limit=100, idle=0.2)
    assert again.replayed == 0


async def test_replay_stops_at_the_limit_without_losing_or_repeating(broker: MemoryBroker) -> None:
    originals = await dead_letters(broker, 5)

    first = await replay(broker, "orders", source="orders.deadletter", limit=2, idle=0.2)
    left = await broker.browse("orders.deadletter")
    second = await replay(broker, "orders", source="orders.deadletter", limit=10, idle=0.2)

    assert (first.replayed, second.replayed) == (2, 3)
    assert [m.data for m in left] == [m.data for m in originals[2:]]
    assert [m.data for m in await broker.browse("orders")] == [m.data for m in originals]


class _RefusingBroker(MemoryBroker):
    """A memory broker whose publishes to one topic are not confirmed."""

    def __init__(self, refused: str) -> None:
        super().__init__(MemoryHub())
        self.refused = refused

    async def _publish(self, topic: str, batch: Sequence[Message]) -> None:
        if topic == self.refused:
            raise PublishError("not confirmed")
        await super()._publish(topic, batch)


async def test_failed_republish_keeps_the_dead_letter() -> None:
    async with _RefusingBroker("orders") as broker:
        originals = await dead_letters(broker, 2)

        result = await replay(broker, "orders", source="orders.deadletter", limit=10, idle=0.2)

        assert result.replayed == 0
        assert result.error is not None and "not confirmed" in result.error
        assert [m.data for m in await broker.browse("orders.deadletter")] == [
            m.data for m in originals
        ]


async def test_replay_on_every_backend(make_broker: MakeBroker, topic: str) -> None:
    # Given five dead letters of a topic
    broker = await make_broker()
    source = dead_letter_topic(topic)
    originals = [Message(data=event(i)) for i in range(5)]
    await broker.publish(source, originals)

    # When they are replayed in two runs (limit 2, then the rest), then once more
    first = await replay(broker, topic, source=source, limit=2, idle=1.0)
    second = await replay(broker, topic, source=source, limit=10, idle=1.0)
    third = await replay(broker, topic, source=source, limit=10, idle=0.5)

    # Then each went back to the topic exactly once
    assert (first.replayed, second.replayed, third.replayed) == (2, 3, 0)
    assert all(r.error is None for r in (first, second, third))
    replayed = await broker.browse(topic, 100)
    assert sorted(m.data for m in replayed) == sorted(m.data for m in originals)
    # and the dead-letter topic holds nothing any more (some backends trim a moment later)
    deadline = asyncio.get_running_loop().time() + 3.0
    while await broker.browse(source) and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    assert await broker.browse(source) == []
