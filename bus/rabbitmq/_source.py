"""The consuming side of the RabbitMQ broker: one Source per group queue, acks coalesced."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import aiormq
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel, AbstractRobustQueue

from bus.errors import BrokerClosed, BrokerError
from bus.message import STORED_MS, Message
from bus.rabbitmq._wire import CLOSE_TIMEOUT, decode, retry_rung
from bus.rpc import MODE_KEY, RequestMode


class QueueHost(Protocol):
    """What a source needs of its broker (the broker imports the source, never the reverse)."""

    async def _publish(self, topic: str, batch: Sequence[Message]) -> None:
        """Publish ``batch`` to ``topic``, confirmed."""

    async def _delay(self, queue: str, message: Message, ms: int) -> None:
        """Park ``message`` on the ``ms`` rung of ``queue``'s delay ladder."""


log = logging.getLogger("omnibus.bus.rabbitmq")


_CALL = RequestMode.CALL.value


def with_stored(message: Message, when: float) -> Message:
    """``message`` marked as stored at ``when`` (unix seconds, this machine's clock)."""
    metadata = {**message.metadata, STORED_MS: str(int(when * 1000))}
    return replace(message, metadata=metadata)


@dataclass(slots=True)
class RabbitDelivery:
    message: Message
    channel: aiormq.abc.AbstractChannel
    tag: int


class RabbitSource:
    """One consumer of a group queue, on its own channel."""

    def __init__(
        self,
        broker: QueueHost,
        topic: str,
        queue: AbstractRobustQueue,
        channel: AbstractRobustChannel,
    ) -> None:
        self._broker = broker
        self._topic = topic
        self._queue = queue
        self._channel = channel
        self._buffer: asyncio.Queue[AbstractIncomingMessage | None] = asyncio.Queue()
        self._arrived: dict[AbstractIncomingMessage, float] = {}  # buffered calls: arrival time
        # delivery tags handed to handlers and not settled yet, per AMQP channel, in tag order
        self._unsettled: dict[aiormq.abc.AbstractChannel, dict[int, None]] = {}
        self._consumer_tag: str | None = None
        self._closed = False

    async def start(self) -> None:
        self._consumer_tag = await self._queue.consume(self._on_message, no_ack=False)

    async def _on_message(self, raw: AbstractIncomingMessage) -> None:
        # A coroutine function: aio-pika runs every callback in a task of its own anyway, and
        # wraps a plain function in one that warns (DeprecationWarning) on every message.
        self._buffer.put_nowait(raw)
        if raw.reply_to is not None:  # maybe a call: note when it arrived (see fetch)
            self._arrived[raw] = time.time()

    async def fetch(self, limit: int) -> Sequence[RabbitDelivery]:
        raw = await self._buffer.get()
        items = [raw]
        while len(items) < limit and not self._buffer.empty():
            items.append(self._buffer.get_nowait())
        out: list[RabbitDelivery] = []
        for item in items:
            if item is None:
                self._buffer.put_nowait(None)  # wake any other waiter too
                if out:
                    break
                raise BrokerClosed("subscription closed")
            arrived = self._arrived.pop(item, None)
            if item.channel.is_closed:  # delivered on a channel lost since; redelivered anyway
                continue
            tag = item.delivery_tag or 0
            self._unsettled.setdefault(item.channel, {})[tag] = None
            message = decode(item, self._topic)
            if arrived is not None and message.metadata.get(MODE_KEY) == _CALL:
                # RabbitMQ drops a call that expires in the queue; the time it then waited in
                # this process's prefetch buffer counts against its time-to-live too.
                message = with_stored(message, arrived)
            out.append(RabbitDelivery(message, item.channel, tag))
        return out

    async def ack(self, deliveries: Sequence[RabbitDelivery]) -> None:
        """Ack ``deliveries`` now (the Dispatcher already lingers to batch them): one
        multiple-ack for the settled prefix of tags, the tags above a running handler alone.

        An ack that cannot be sent raises :class:`BrokerError`; RabbitMQ then redelivers.
        """
        batches: dict[aiormq.abc.AbstractChannel, list[int]] = {}
        for delivery in deliveries:
            self._unsettled.get(delivery.channel, {}).pop(delivery.tag, None)
            batches.setdefault(delivery.channel, []).append(delivery.tag)
        for channel, tags in batches.items():
            if channel.is_closed:  # the broker requeued them when the channel went
                self._unsettled.pop(channel, None)
                continue
            tags.sort()
            lowest = next(iter(self._unsettled.get(channel, {})), None)
            prefix = [t for t in tags if lowest is None or t < lowest]
            try:
                if prefix:  # every tag below the lowest unsettled one is settled: one frame
                    await channel.basic_ack(prefix[-1], multiple=True)
                for tag in tags[len(prefix) :]:
                    await channel.basic_ack(tag)
            except (aiormq.exceptions.AMQPError, ConnectionError) as exc:
                raise BrokerError(f"acks on {self._topic} lost with their channel: {exc}") from exc

    async def retry(self, delivery: RabbitDelivery, delay: float) -> None:
        message = replace(delivery.message, attempt=delivery.message.attempt + 1)
        try:
            await self._broker._delay(self._queue.name, message, retry_rung(delay))
        except Exception:
            await self._hand_back(delivery)  # the original comes back now instead
            raise
        await self.ack([delivery])

    async def dead_letter(self, delivery: RabbitDelivery, topic: str) -> None:
        try:
            await self._broker._publish(topic, [replace(delivery.message, attempt=1)])
        except Exception:
            await self._hand_back(delivery)
            raise
        await self.ack([delivery])

    async def release(self, deliveries: Sequence[RabbitDelivery]) -> None:
        for delivery in deliveries:
            await self._hand_back(delivery)

    async def _hand_back(self, delivery: RabbitDelivery) -> None:
        """Requeue an unsettled delivery (RabbitMQ has no lease that would expire)."""
        self._unsettled.get(delivery.channel, {}).pop(delivery.tag, None)
        if not delivery.channel.is_closed:
            with contextlib.suppress(Exception):
                await delivery.channel.basic_nack(delivery.tag, requeue=True)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._buffer.put_nowait(None)
        # bounded: with the broker unreachable the robust channel would wait for a reconnect
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                if self._consumer_tag is not None:
                    await self._queue.cancel(self._consumer_tag)
        # closing the channel hands every unacked delivery (prefetched ones too) back to the queue
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self._channel.close()
