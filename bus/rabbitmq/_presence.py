"""Presence on RabbitMQ: beats routed by name, only to the brokers that asked about that name.

- ``omnibus@presence@by-name`` (topic exchange, auto-delete): a broker publishes the beats and
  withdrawals of its entries of ``<name>`` with routing key ``p.<name>``, and a probe for
  ``<name>`` with ``q.<name>`` (``q..all`` probes every announcing broker).
- one exclusive, server-named queue per broker, bound lazily: to ``p.<name>`` once it looked
  ``<name>`` up (``p.#`` once it listed every name), to ``q.<name>`` while it announces an entry
  of ``<name>``, and to ``q..all`` while it announces anything.
- ``omnibus@presence@roll@<name>`` (auto-delete queue that never receives anything): every broker
  announcing ``<name>`` consumes it, so its consumer count tells a broker that looks ``<name>`` up
  for the first time how many answers to its probe to await (at most one heartbeat interval);
  ``omnibus@presence@roll`` counts every announcing broker the same way.

A beat thus reaches only the brokers interested in its name (no N-squared fan-out), and after the
first lookup of a name the local table answers a lookup that finds a server (no round trip); one
that finds none is confirmed by a mark sent through this broker's own queue, which RabbitMQ
delivers after every beat routed to it before (beats are confirmed, so an announce that returned
is in that queue).  A broker applies its
own beats and withdrawals to its table at once; others see a withdrawal when it arrives and a
crash once the entry's beats are older than the heartbeat TTL.  Entries are keyed by
:func:`bus.presence_keys.storage_instance`, so apps and services are separate namespaces.
"""

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

from bus.errors import BrokerUnavailable
from bus.presence import HEARTBEAT_INTERVAL, HEARTBEAT_TTL, Presence, is_service
from bus.presence_keys import storage_instance
from bus.rabbitmq._wire import CLOSE_TIMEOUT

log = logging.getLogger("omnibus.bus.rabbitmq")

PRESENCE_EXCHANGE = "omnibus@presence@by-name"
PRESENCE_ROLL = "omnibus@presence@roll"
_ALL = "q..all"  # never a topic's probe key: a topic name cannot start with "."
_KEEP = "k..alive"  # bound by every broker, published to by none
_START_ATTEMPTS = 5


def roll_name(name: str) -> str:
    """The queue whose consumers are the brokers announcing ``name``."""
    return f"{PRESENCE_ROLL}@{name}"


class PresenceBoard:
    """The presence table of one broker, fed by the beats of the names it looks up."""

    def __init__(self, connection: AbstractRobustConnection, instance: str) -> None:
        self._connection = connection
        self._instance = instance
        self._entries: dict[tuple[str, str], Presence] = {}
        self._channel: AbstractRobustChannel | None = None
        self._queue: AbstractRobustQueue | None = None
        self._exchange: aio_pika.abc.AbstractExchange | None = None
        self._announced: Callable[[], list[Presence]] = list
        self._watched: dict[str | None, asyncio.Task[None]] = {}  # None: every name
        self._announcing: dict[str, str] = {}  # name -> consumer tag on its roll queue
        self._answers: dict[str | None, tuple[set[str], int, asyncio.Event]] = {}
        self._on_roll = False
        self._marks: dict[str, asyncio.Future[None]] = {}

    async def start(self, announced: Callable[[], list[Presence]]) -> None:
        """Declare the exchange and this broker's queue, and listen."""
        self._announced = announced
        for attempt in range(1, _START_ATTEMPTS + 1):
            try:
                await self._open()
                break
            except aiormq.exceptions.ChannelNotFoundEntity:
                # The auto-delete exchange vanished between our declare and our first bind
                # (the last other broker left just then): declare it again on a new channel.
                if attempt == _START_ATTEMPTS:
                    raise BrokerUnavailable("the presence exchange kept disappearing") from None
                log.info("presence exchange was deleted while binding; declaring it again")
        assert self._queue is not None
        await self._queue.consume(self._on_message, no_ack=True)

    async def _open(self) -> None:
        # Confirmed: once announce() returns, the beat is in every interested broker's queue.
        channel = await self._connection.channel(publisher_confirms=True)
        self._channel = channel
        self._exchange = await channel.declare_exchange(
            PRESENCE_EXCHANGE, aio_pika.ExchangeType.TOPIC, auto_delete=True
        )
        self._queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        # RabbitMQ deletes an auto-delete exchange when its last binding goes; this binding
        # (a key nothing is published with) keeps it alive for as long as this broker is up, so
        # a later bind of ours never meets a deleted exchange (NOT_FOUND closes the channel).
        await self._queue.bind(PRESENCE_EXCHANGE, routing_key=_KEEP)

    # -- announcing -----------------------------------------------------------------------

    async def beat(self, entries: Sequence[Presence]) -> None:
        """Publish the beats of ``entries``, one message per name, and apply them here."""
        by_name: dict[str, list[Presence]] = {}
        for entry in entries:
            by_name.setdefault(entry.name, []).append(entry)
        for name, group in by_name.items():
            await self._join(name)
            self._apply("beat", [_entry_json(e) for e in group])
            await self._send({"op": "beat", "entries": [_entry_json(e) for e in group]}, name)

    async def remove(self, entry: Presence) -> None:
        """Withdraw ``entry``: gone here at once, for the others when the message arrives."""
        self._entries.pop((entry.name, storage_instance(entry)), None)
        await self._send({"op": "gone", "entries": [_entry_json(entry)]}, entry.name)
        if not any(e.name == entry.name for e in self._announced()):
            await self._leave(entry.name)

    async def _join(self, name: str) -> None:
        """Answer probes for ``name`` and be counted on its roll (once per name)."""
        if name in self._announcing or self._channel is None or self._queue is None:
            return
        self._announcing[name] = ""
        if not self._on_roll:  # counted among every announcing broker, for `list all`
            self._on_roll = True
            await self._queue.bind(PRESENCE_EXCHANGE, routing_key=_ALL)
            everyone = await self._channel.declare_queue(PRESENCE_ROLL, auto_delete=True)
            await everyone.consume(_ignore, no_ack=True)
        await self._queue.bind(PRESENCE_EXCHANGE, routing_key=f"q.{name}")
        roll = await self._channel.declare_queue(roll_name(name), auto_delete=True)
        self._announcing[name] = await roll.consume(_ignore, no_ack=True)

    async def _leave(self, name: str) -> None:
        tag = self._announcing.pop(name, "")
        if not tag or self._channel is None or self._queue is None:
            return
        with contextlib.suppress(Exception):
            await self._queue.unbind(PRESENCE_EXCHANGE, routing_key=f"q.{name}")
            roll = await self._channel.declare_queue(roll_name(name), auto_delete=True)
            await roll.cancel(tag)

    # -- looking up -----------------------------------------------------------------------

    async def entries(self, name: str | None) -> list[Presence]:
        """The live entries of ``name`` (or of every name); a round trip only the first time."""
        watching = self._watched.get(name)
        if watching is None:
            watching = self._watched[name] = asyncio.create_task(self._watch(name))
        try:
            await asyncio.shield(watching)
        except BrokerUnavailable:
            self._watched.pop(name, None)
            raise
        found = self._live(name)
        if name is None or not any(is_service(e) for e in found):
            # A negative answer (nobody serves it) is confirmed against what is already queued
            # for us, so a server that has just announced itself is never missed.
            await self._barrier()
            found = self._live(name)
        return found

    def _live(self, name: str | None) -> list[Presence]:
        now = time.time()
        for key in [k for k, e in self._entries.items() if not e.alive(now, HEARTBEAT_TTL)]:
            del self._entries[key]  # gone without a word (crashed): forget it
        return [e for e in self._entries.values() if name is None or e.name == name]

    async def _barrier(self) -> None:
        """Wait until every beat routed to us before now has been read (a queue is FIFO)."""
        if self._queue is None or self._channel is None:
            raise BrokerUnavailable("presence is not started")
        mark = uuid.uuid4().hex
        future = self._marks[mark] = asyncio.get_running_loop().create_future()
        payload = json.dumps({"op": "mark", "mark": mark, "from": self._instance}).encode()
        try:
            async with asyncio.timeout(5.0):
                await self._channel.default_exchange.publish(
                    aio_pika.Message(payload), routing_key=self._queue.name
                )
                await future
        except TimeoutError:
            raise BrokerUnavailable("the presence listener did not answer") from None
        finally:
            self._marks.pop(mark, None)

    async def _watch(self, name: str | None) -> None:
        """Receive the beats of ``name`` from now on, and probe for the entries already up."""
        if self._queue is None:
            raise BrokerUnavailable("presence is not started")
        await self._queue.bind(
            PRESENCE_EXCHANGE, routing_key="p.#" if name is None else f"p.{name}"
        )
        expected = await self._roll_count(PRESENCE_ROLL if name is None else roll_name(name))
        if not expected:
            return
        answered: set[str] = set()
        done = asyncio.Event()
        self._answers[name] = (answered, expected, done)
        try:
            await self._send({"op": "probe", "name": name}, None, routing_key=_probe_key(name))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(HEARTBEAT_INTERVAL):
                    await done.wait()
        finally:
            self._answers.pop(name, None)

    async def _roll_count(self, queue: str) -> int:
        channel = await self._connection.channel(publisher_confirms=False)
        try:
            result = await channel.declare_queue(queue, passive=True, robust=False)
            return int(result.declaration_result.consumer_count or 0)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return 0
        finally:
            with contextlib.suppress(Exception):
                await channel.close()

    # -- the wire -------------------------------------------------------------------------

    async def _send(
        self, body: dict[str, Any], name: str | None, *, routing_key: str | None = None
    ) -> None:
        if self._exchange is None:
            raise BrokerUnavailable("presence is not started")
        payload = json.dumps({**body, "from": self._instance}).encode()
        key = routing_key if routing_key is not None else f"p.{name}"
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self._exchange.publish(aio_pika.Message(payload), routing_key=key)
        except TimeoutError:
            raise BrokerUnavailable("RabbitMQ did not take a presence message in time") from None

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
        elif op == "probe" and sender != self._instance:
            await self._answer(body.get("name"))
        elif op in ("beat", "gone") and sender != self._instance:
            entries = body.get("entries", [])
            self._apply(op, entries)
            if op == "beat":
                self._count_answer(sender, {str(e.get("name")) for e in entries})

    async def _answer(self, name: str | None) -> None:
        mine = [e for e in self._announced() if name is None or e.name == name]
        with contextlib.suppress(BrokerUnavailable):
            await self.beat(mine)

    def _count_answer(self, sender: str, names: set[str]) -> None:
        for key, (answered, expected, done) in self._answers.items():
            if key is None or key in names:
                answered.add(sender)
                if len(answered) >= expected:
                    done.set()

    def _apply(self, op: str, entries: list[dict[str, Any]]) -> None:
        now = time.time()
        for item in entries:
            try:
                entry = _entry_from(item, now)
            except (KeyError, TypeError, ValueError):
                continue
            key = (entry.name, storage_instance(entry))
            if op == "beat":
                self._entries[key] = entry
            else:
                self._entries.pop(key, None)


def _probe_key(name: str | None) -> str:
    return _ALL if name is None else f"q.{name}"


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
    """Consumer of the roll queues, which never receive anything."""
