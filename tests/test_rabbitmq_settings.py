"""RabbitMQ settings, names, the retry ladder and ack coalescing: no broker needed."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from bus.errors import BrokerError, InvalidName
from bus.message import Message
from bus.rabbitmq import (
    RETRY_LADDER_MS,
    held_name,
    queue_name,
    retry_queue_name,
)
from bus.rabbitmq._source import RabbitDelivery, RabbitSource
from bus.rabbitmq._wire import retry_rung


def test_names_follow_dapr_and_never_collide_with_topics() -> None:
    assert queue_name("orders-app", "orders") == "orders-app-orders"
    assert held_name("orders") == "orders@held"
    assert retry_queue_name("g-orders", 5000) == "g-orders@retry@5000"
    with pytest.raises(InvalidName):
        queue_name("g" * 128, "t" * 200)


def test_retry_rung_never_shortens_the_backoff() -> None:
    assert retry_rung(0) == 0
    assert retry_rung(0.05) == 100
    assert retry_rung(0.4) == 500
    assert retry_rung(1.0) == 1000
    assert retry_rung(7) == 10_000
    assert retry_rung(10 * 3600) == RETRY_LADDER_MS[-1]  # capped at the top rung


def test_retry_rung_is_at_most_two_and_a_half_times_the_backoff() -> None:
    # what the ladder's comment promises, for every backoff from 100 ms to the top rung
    wanted = 100.0
    while wanted <= RETRY_LADDER_MS[-1]:
        for ms in (wanted, wanted + 1, wanted * 1.001):
            if ms <= RETRY_LADDER_MS[-1]:
                rung = retry_rung(ms / 1000)
                assert ms <= rung <= 2.5 * ms, (ms, rung)
        wanted *= 1.07
    assert retry_rung(60.001) <= 150 * 1000


@dataclass(eq=False)
class _Channel:
    """Records the acks a source sends; a stand-in for one AMQP channel."""

    is_closed: bool = False
    acks: list[tuple[int, bool]] = field(default_factory=list)

    fail: bool = False

    async def basic_ack(self, delivery_tag: int, multiple: bool = False) -> None:
        if self.fail:
            raise ConnectionError("connection reset")
        self.acks.append((delivery_tag, multiple))


def _source_with(channel: _Channel, tags: list[int]) -> tuple[RabbitSource, list[RabbitDelivery]]:
    source = RabbitSource(None, "t", None, None)  # type: ignore[arg-type]
    deliveries = [RabbitDelivery(Message(data=b""), channel, tag) for tag in tags]  # type: ignore[arg-type]
    source._unsettled[channel] = dict.fromkeys(tags)  # type: ignore[index]
    return source, deliveries


async def test_acks_of_a_settled_prefix_are_one_multiple_ack() -> None:
    channel = _Channel()
    source, d = _source_with(channel, [1, 2, 3, 4, 5, 6])
    # 1..3 settled while 4 still runs: one multiple ack, sent at once (the Dispatcher lingers)
    await source.ack([d[2], d[0], d[1]])
    assert channel.acks == [(3, True)]
    # 6 settles before 4 and 5: acked alone (4 is still unsettled)
    await source.ack([d[5]])
    assert channel.acks[-1] == (6, False)
    # 4 and 5 settle: everything below the lowest unsettled tag again, in one frame
    await source.ack([d[3], d[4]])
    assert channel.acks[-1] == (5, True)
    assert source._unsettled[channel] == {}  # type: ignore[index]


async def test_acks_on_a_lost_channel_are_skipped() -> None:
    channel = _Channel(is_closed=True)
    source, deliveries = _source_with(channel, [1, 2])
    await source.ack(deliveries)  # the broker redelivers them: nothing to send
    assert channel.acks == []


async def test_an_ack_that_cannot_be_sent_is_an_error_not_swallowed() -> None:
    channel = _Channel(fail=True)
    source, deliveries = _source_with(channel, [1])
    with pytest.raises(BrokerError, match="acks on t lost"):
        await source.ack(deliveries)
