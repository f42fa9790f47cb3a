"""Presence on RabbitMQ: beats fanned out to every broker, each keeping the table locally."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
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

from bus.backoff import Backoff
from bus.errors import BrokerUnavailable
from bus.presence import HEARTBEAT_INTERVAL, HEARTBEAT_TTL, Presence
from bus.rabbitmq._wire import CLOSE_TIMEOUT

log = logging.getLogger("omnibus.bus.rabbitmq")

PRESENCE_EXCHANGE = "omnibus@presence"
PRESENCE_ROLL = "omnibus@presence@roll"


_REDECLARE = Backoff(initial=0.01, maximum=0.2, jitter=0.01)


class PresenceBoard:
    """The presence table of one broker, fed by the beats every broker fans out."""

    def __init__(self, connection: AbstractRobustConnection, instance: str) -> None:
        self._connection = connection
        self._instance = instance
        self._entries: dict[tuple[str, str], Presence] = {}
        self._marks: dict[str, asyncio.Future[None]] = {}
        self._channel: AbstractRobustChannel | None = None
        self._queue: AbstractRobustQueue | None = None
        self._exchange: aio_pika.abc.AbstractExchange | None = None
        self._announced: Callable[[], list[Presence]] = list
        self._roll_joined = False
        self._awaited: set[str] | None = None
        self._expected = 0
        self._warm = asyncio.Event()

    async def start(self, announced: Callable[[], list[Presence]]) -> None:
        self._announced = announced
        channel = await self._connection.channel(publisher_confirms=True)
        self._channel = channel
        # The auto-delete exchange can vanish between declare and bind (its last queue went).
        retrying = _REDECLARE.retrying(
            "declaring the presence exchange",
            on=aiormq.exceptions.ChannelNotFoundEntity,
            attempts=3,
        )
        await retrying(self._declare, channel)
        assert self._queue is not None
        await self._queue.consume(self._on_message, no_ack=True)
        others = await self._roll_count()
        self._awaited = set() if others else None
        if others:
            asyncio.get_running_loop().call_later(HEARTBEAT_INTERVAL, self._warm.set)
            self._expected = others
            await self._send({"op": "probe"})
        else:
            self._warm.set()

    async def _declare(self, channel: AbstractRobustChannel) -> None:
        try:
            self._exchange = await channel.declare_exchange(
                PRESENCE_EXCHANGE, aio_pika.ExchangeType.FANOUT, auto_delete=True
            )
            self._queue = await channel.declare_queue(exclusive=True, auto_delete=True)
            await self._queue.bind(self._exchange)
        except aiormq.exceptions.ChannelNotFoundEntity:
            await channel.ready()  # the error closed the channel: reopen it for the next try
            raise

    async def _roll_count(self) -> int:
        channel = await self._connection.channel(publisher_confirms=False)
        try:
            result = await channel.declare_queue(PRESENCE_ROLL, passive=True, robust=False)
            return int(result.declaration_result.consumer_count or 0)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return 0
        finally:
            with contextlib.suppress(Exception):
                await channel.close()

    async def _send(self, body: dict[str, Any], routing_key: str = "") -> None:
        if self._channel is None or self._exchange is None:
            raise BrokerUnavailable("presence is not started")
        payload = json.dumps({**body, "from": self._instance}).encode()
        target = self._exchange if not routing_key else self._channel.default_exchange
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await target.publish(aio_pika.Message(payload), routing_key=routing_key)
        except TimeoutError:
            raise BrokerUnavailable("RabbitMQ did not take a presence message in time") from None

    async def beat(self, entries: Sequence[Presence]) -> None:
        if not self._roll_joined and self._channel is not None:
            roll = await self._channel.declare_queue(PRESENCE_ROLL, auto_delete=True)
            await roll.consume(_ignore, no_ack=True)
            self._roll_joined = True
        await self._send({"op": "beat", "entries": [_entry_json(e) for e in entries]})

    async def remove(self, entry: Presence) -> None:
        await self._send({"op": "gone", "entries": [_entry_json(entry)]})

    async def entries(self, name: str | None) -> list[Presence]:
        await self._warm.wait()
        await self._barrier()
        now = time.time()
        for key in [k for k, e in self._entries.items() if not e.alive(now, HEARTBEAT_TTL)]:
            del self._entries[key]  # gone without a word (crashed): forget it
        return [entry for entry in self._entries.values() if name is None or entry.name == name]

    async def _barrier(self) -> None:
        """Wait until every beat enqueued for us before now has been read (queues are FIFO)."""
        assert self._queue is not None
        mark = uuid.uuid4().hex
        future = self._marks[mark] = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(5.0):
                await self._send({"op": "mark", "mark": mark}, routing_key=self._queue.name)
                await future
        except TimeoutError:
            raise BrokerUnavailable("the presence listener did not answer") from None
        finally:
            self._marks.pop(mark, None)

    async def _on_message(self, raw: AbstractIncomingMessage) -> None:
        try:
            body = json.loads(raw.body)
            op, sender = body["op"], body["from"]
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring a malformed presence message")
            return
        if op == "mark":
            future = self._marks.get(body.get("mark", ""))
            if future is not None and not future.done():
                future.set_result(None)
        elif op == "probe" and sender != self._instance and self._roll_joined:
            await self.beat(self._announced())
        elif op in ("beat", "gone"):
            self._apply(op, body.get("entries", []), sender)

    def _apply(self, op: str, entries: list[dict[str, Any]], sender: str) -> None:
        now = time.time()
        for item in entries:
            try:
                entry = _entry_from(item, now)
            except (KeyError, TypeError, ValueError):
                continue
            key = (entry.name, entry.instance)
            if op == "beat":
                self._entries[key] = entry
            else:
                self._entries.pop(key, None)
        if op == "beat" and self._awaited is not None and sender != self._instance:
            self._awaited.add(sender)
            if len(self._awaited) >= self._expected:
                self._warm.set()


def _entry_json(entry: Presence) -> dict[str, Any]:
    return {
        "name": entry.name,
        "instance": entry.instance,
        "address": entry.address,
        "started": entry.started,
        "metadata": dict(entry.metadata),
    }


def _entry_from(item: dict[str, Any], now: float) -> Presence:
    return Presence(
        name=item["name"],
        instance=item["instance"],
        address=item.get("address", ""),
        started=float(item["started"]),
        last_beat=now,  # our clock, not the sender's: liveness never depends on clock skew
        metadata={str(k): str(v) for k, v in dict(item.get("metadata", {})).items()},
    )


async def _ignore(raw: AbstractIncomingMessage) -> None:
    """Consumer of the roll queue, which never receives anything."""
