"""The RabbitMQ broker: topology, confirmed publishes, the delay ladder and request/reply.

The storage layout is described in the package docstring (:mod:`bus.rabbitmq`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractRobustChannel,
    AbstractRobustConnection,
    AbstractRobustQueue,
)

from bus.broker import BaseBroker
from bus.delivery import Source
from bus.errors import BrokerClosed, BrokerUnavailable
from bus.message import Message, stored_age
from bus.options import SubscriptionOptions
from bus.presence import Presence
from bus.rabbitmq._presence import PresenceBoard
from bus.rabbitmq._source import RabbitSource
from bus.rabbitmq._wire import (
    CLOSE_TIMEOUT,
    EXPIRE_AFTER_MS,
    REPLY_TO,
    checked,
    decode,
    held_name,
    queue_name,
    ready,
    retry_queue_name,
    send,
)
from bus.rabbitmq.settings import RabbitSettings

log = logging.getLogger("omnibus.bus.rabbitmq")


class RabbitBroker(BaseBroker):
    """A broker on RabbitMQ; brokers on one server (and vhost) see each other's messages.

    ``declared_queues`` / ``declared_exchanges`` record every durable object this broker
    declared, so that tools and tests can remove them.
    """

    def __init__(
        self,
        settings: RabbitSettings | None = None,
        *,
        instance: str | None = None,
        drain_timeout: float = 5.0,
    ) -> None:
        super().__init__(instance=instance, drain_timeout=drain_timeout)
        self.settings = settings if settings is not None else RabbitSettings()
        self.declared_queues: set[str] = set()
        self.declared_exchanges: set[str] = set()
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._inbox_channel: AbstractRobustChannel | None = None
        self._rungs: AbstractRobustChannel | None = None  # declares the delay ladder's rungs
        self._topics: set[str] = set()
        self._topic_args: dict[str, dict[str, Any] | None] = {}
        self._topic_lock = asyncio.Lock()
        self._group_queues: dict[str, set[str]] = {}
        self._presence: PresenceBoard | None = None

    # -- connection ---------------------------------------------------------------------------

    async def _connect(self) -> None:
        try:
            self._connection = await aio_pika.connect_robust(
                self.settings.url,
                reconnect_interval=self.settings.reconnect_wait,
                timeout=self.settings.connect_timeout,
                client_properties={"connection_name": f"omnibus {self.instance}"},
            )
            self._channel = await self._connection.channel(
                publisher_confirms=True, on_return_raises=True
            )
            self._presence = PresenceBoard(self._connection, self.instance)
            await self._presence.start(lambda: list(self._announced.values()))
        except (OSError, aiormq.exceptions.AMQPError) as exc:
            if self._connection is not None:
                await self._connection.close()
            raise BrokerUnavailable(f"cannot connect to RabbitMQ: {exc}") from exc

    async def _disconnect(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await self._connection.close()
        self._connection = self._channel = self._inbox_channel = self._rungs = None

    def _conn(self) -> AbstractRobustConnection:
        if self._connection is None:
            raise BrokerClosed("the broker is not connected")
        return self._connection

    def _chan(self) -> AbstractRobustChannel:
        if self._channel is None:
            raise BrokerClosed("the broker is not connected")
        return self._channel

    # -- topology -----------------------------------------------------------------------------

    async def _declare_topic(self, channel: AbstractRobustChannel, topic: str) -> None:
        """Declare the topic exchange and its held queue on ``channel`` (restored on reconnect)."""
        durable, held = self.settings.durable, held_name(topic)
        held_exchange = await channel.declare_exchange(held, "fanout", durable=durable)
        held_queue = await channel.declare_queue(held, durable=durable)
        await held_queue.bind(held_exchange)
        self.declared_exchanges.update((held, topic))
        self.declared_queues.add(held)
        arguments = await self._topic_arguments(topic)
        if arguments is None:
            await channel.declare_exchange(topic, passive=True)
        else:
            await channel.declare_exchange(
                topic, self.settings.exchange_kind, durable=durable, arguments=arguments
            )

    async def _topic_arguments(self, topic: str) -> dict[str, Any] | None:
        """The topic exchange's arguments, or None if another client declared it without ours.

        Tried on a throwaway channel, since a refused declare closes the channel it was sent on.
        """
        if topic in self._topic_args:
            return self._topic_args[topic]
        arguments: dict[str, Any] | None = {"alternate-exchange": held_name(topic)}
        channel = await self._conn().channel(publisher_confirms=False)
        try:
            await channel.declare_exchange(
                topic,
                self.settings.exchange_kind,
                durable=self.settings.durable,
                arguments=arguments,
                robust=False,
            )
        except aiormq.exceptions.ChannelPreconditionFailed:
            log.warning(
                "exchange %r exists without alternate-exchange (declared by another client): "
                "messages published while no queue is bound to it are not kept",
                topic,
            )
            arguments = None
        finally:
            with contextlib.suppress(Exception):
                await channel.close()
        self._topic_args[topic] = arguments
        return arguments

    async def _ensure_topic(self, topic: str) -> None:
        if topic in self._topics:
            return
        # Declaring waits for a reconnect in progress without a bound: wait for it here, bounded.
        await ready(self._chan(), self.settings.connect_timeout)
        async with self._topic_lock:
            if topic not in self._topics:
                await self._declare_topic(self._chan(), topic)
                self._topics.add(topic)

    async def _publish(self, topic: str, batch: Sequence[Message]) -> None:
        await self._ensure_topic(topic)
        via_inbox = batch[0].reply_to == REPLY_TO and self._inbox_channel is not None
        channel = self._inbox_channel if via_inbox else self._channel
        if channel is None:
            raise BrokerClosed("the broker is not connected")
        routing_key = batch[0].metadata.get("routingKey", "")
        await send(channel, topic, routing_key, batch, self.settings, mandatory=False)

    async def _delay(self, queue: str, message: Message, ms: int) -> None:
        """Put ``message`` back on ``queue`` after ``ms`` (a ladder rung), confirmed."""
        channel = self._chan()
        target = queue
        if ms > 0:
            target = retry_queue_name(queue, ms)
            arguments = {
                "x-message-ttl": ms,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": queue,
                "x-expires": ms + EXPIRE_AFTER_MS,
            }
            # Re-declared before every use: it resets x-expires and recreates a deleted rung.  On
            # a channel of its own: a refused declaration (PRECONDITION_FAILED) closes the
            # channel it was sent on, which must not be the one every publish uses.
            declaring = await self._rung_channel()
            await declaring.declare_queue(
                target, durable=self.settings.durable, arguments=arguments, robust=False
            )
            self.declared_queues.add(target)
        await send(channel, "", target, [message], self.settings, mandatory=True)

    async def _rung_channel(self) -> AbstractRobustChannel:
        if self._rungs is None or self._rungs.is_closed:
            self._rungs = await self._conn().channel(publisher_confirms=False)
        return self._rungs

    # -- subscribing --------------------------------------------------------------------------

    async def _open_source(self, topic: str, options: SubscriptionOptions) -> Source[Any]:
        name = queue_name(options.group, topic)
        channel = await self._conn().channel(publisher_confirms=False)
        try:
            await channel.set_qos(prefetch_count=self.settings.prefetch_count)
            await self._declare_topic(channel, topic)
            queue = await self._declare_group_queue(channel, name)
            await queue.bind(topic, routing_key="")
            await self._replay_held(topic)
            source = RabbitSource(self, topic, queue, channel)
            await source.start()
        except BaseException:
            with contextlib.suppress(Exception):
                await channel.close()
            raise
        self._group_queues.setdefault(topic, set()).add(name)
        return source

    async def _declare_group_queue(
        self, channel: AbstractRobustChannel, name: str
    ) -> AbstractRobustQueue:
        durable = self.settings.durable
        if self.settings.enable_dead_letter:
            dlx, dlq = f"dlx-{name}", checked(f"dlq-{name}")
            exchange = await channel.declare_exchange(dlx, "fanout", durable=durable)
            dead = await channel.declare_queue(dlq, durable=durable)
            await dead.bind(exchange)
            self.declared_exchanges.add(dlx)
            self.declared_queues.add(dlq)
        queue = await channel.declare_queue(
            name, durable=durable, arguments=self.settings.queue_arguments(name)
        )
        self.declared_queues.add(name)
        return queue

    async def _replay_held(self, topic: str) -> None:
        """Send messages held while nobody was bound to the topic's exchange, then ack them."""
        channel = await self._conn().channel(publisher_confirms=False)
        try:
            held = await channel.declare_queue(held_name(topic), passive=True, robust=False)
            # Exactly what was held now: a forwarded message that comes back (nobody bound after
            # all) lands behind them.  Not by message id, which publishers may reuse.
            waiting = int(held.declaration_result.message_count or 0)
            taken: list[AbstractIncomingMessage] = []
            for _ in range(waiting):
                raw = await held.get(no_ack=False, fail=False)
                if raw is None:
                    break
                taken.append(raw)
                if len(taken) >= 500:
                    await self._forward(topic, taken)
                    taken = []
            if taken:
                await self._forward(topic, taken)
        finally:
            with contextlib.suppress(Exception):
                await channel.close()

    async def _forward(self, topic: str, taken: list[AbstractIncomingMessage]) -> None:
        messages = [decode(raw, topic, count_redelivery=False) for raw in taken]
        await send(self._chan(), topic, "", messages, self.settings, mandatory=False)
        await taken[-1].ack(multiple=True)

    # -- request/reply ------------------------------------------------------------------------

    async def _open_inbox(self, deliver: Callable[[Message], None]) -> str:
        channel = await self._conn().channel(publisher_confirms=True)
        queue = await channel.declare_queue(REPLY_TO, passive=True)

        async def on_reply(raw: AbstractIncomingMessage) -> None:
            deliver(decode(raw, ""))

        await queue.consume(on_reply, no_ack=True)
        channel.close_callbacks.add(self._inbox_closed)
        self._inbox_channel = channel
        # Requests carry this address as reply_to; _publish sends them on the inbox channel,
        # which is what direct reply-to requires, and RabbitMQ rewrites it per channel.
        return REPLY_TO

    def _inbox_closed(self, channel: object, exc: BaseException | None) -> None:
        # A direct reply-to address belongs to its channel: replies to requests sent before the
        # channel closed can never arrive, even once aio-pika has reopened it.
        self._inbox_lost(f"the RabbitMQ reply channel closed: {exc or 'by the broker'}")

    def _call_age(self, request: Message) -> float | None:
        """How long the call waited in this process since RabbitMQ delivered it."""
        return stored_age(request)

    async def _publish_call(self, topic: str, request: Message, ttl: float) -> None:
        # A call is worthless once its caller gave up: transient, and RabbitMQ drops it itself
        # when it waited longer than its time-to-live (per-message expiration).
        await self._ensure_topic(topic)
        channel = self._inbox_channel or self._chan()
        routing_key = request.metadata.get("routingKey", "")
        await send(channel, topic, routing_key, [request], self.settings, mandatory=False, ttl=ttl)

    async def _send_reply(self, address: str, reply: Message) -> None:
        # A requester that is gone (or reconnected since) gets nothing: like a lost reply.
        await send(self._chan(), "", address, [reply], self.settings, mandatory=False)

    # -- browsing -----------------------------------------------------------------------------

    async def _browse(self, topic: str, limit: int) -> list[Message]:
        """The held messages of ``topic``, then those waiting in this broker's group queues.

        Messages are taken without ack and handed back when the browsing channel closes; a
        browsed message of a group queue is then marked redelivered (it counts one attempt more).
        """
        await self._ensure_topic(topic)
        channel = await self._conn().channel(publisher_confirms=False)
        found: list[Message] = []
        seen: set[str] = set()
        try:
            for name in [held_name(topic), *sorted(self._group_queues.get(topic, ()))]:
                queue = await channel.get_queue(name, ensure=False)
                while len(found) < limit:
                    raw = await queue.get(no_ack=False, fail=False)
                    if raw is None:
                        break
                    message = decode(raw, topic, count_redelivery=False)
                    if message.id not in seen:
                        seen.add(message.id)
                        found.append(message)
        finally:
            with contextlib.suppress(Exception):
                await channel.close()
        return found

    # -- presence -----------------------------------------------------------------------------

    def _board(self) -> PresenceBoard:
        if self._presence is None:
            raise BrokerClosed("the broker is not connected")
        return self._presence

    async def _beat(self, entries: Sequence[Presence]) -> None:
        await self._board().beat(entries)

    async def _remove_presence(self, entry: Presence) -> None:
        await self._board().remove(entry)

    async def _list_presence(self, name: str | None) -> list[Presence]:
        return await self._board().entries(name)
