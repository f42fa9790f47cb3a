"""The Broker contract and the base class every backend builds on.

A backend subclasses :class:`BaseBroker` and implements the underscore hooks: how to connect,
publish a batch, open a :class:`~bus.delivery.Source` for a subscription, run an inbox, send a
reply, and keep presence entries.  Everything that is policy (validation, the delivery engine,
request/reply, heartbeats, the shutdown order) lives here once.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Protocol, Self

from bus.delivery import Dispatcher, Handler, Source
from bus.errors import BrokerClosed, BrokerError, InvalidArgument, NoResponders
from bus.message import Message, Outcome, validate_name, validate_topic
from bus.options import SubscriptionOptions
from bus.presence import HEARTBEAT_INTERVAL, Presence
from bus.rpc import Inbox, Replier, await_reply, make_reply

log = logging.getLogger("omnibus.bus")

DEADLINE_KEY = "omnibus-deadline"


class Broker(Protocol):
    """What the rest of omnibus needs from a bus backend."""

    instance: str

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc: object) -> None: ...

    async def publish(self, topic: str, batch: Sequence[Message]) -> None:
        """Publish ``batch`` to ``topic``; returns once the broker holds every message durably."""
        ...

    async def subscribe(
        self, topic: str, handler: Handler, options: SubscriptionOptions
    ) -> Subscription:
        """Consume ``topic`` as ``options.group`` until the subscription is stopped."""
        ...

    async def serve(
        self, topic: str, replier: Replier, options: SubscriptionOptions
    ) -> Subscription:
        """Answer requests sent to ``topic``; replicas of the group share the load."""
        ...

    async def request(self, topic: str, message: Message, timeout: float) -> Message:
        """Send a request to ``topic`` and wait for its reply."""
        ...

    async def browse(self, topic: str, limit: int = 100) -> list[Message]:
        """Messages still held for ``topic`` (not acked by every group), oldest first."""
        ...

    async def announce(self, presence: Presence) -> None:
        """Keep ``presence`` alive with a heartbeat until withdrawn or closed."""
        ...

    async def withdraw(self, presence: Presence) -> None:
        """Remove ``presence`` at once."""
        ...

    async def instances(self, name: str | None = None) -> list[Presence]:
        """Live presence entries, of one name or all."""
        ...

    async def close(self) -> None:
        """Stop every subscription in the stated order, then disconnect."""
        ...


class Subscription:
    """A running subscription; stop it (or leave its ``async with``) to end it."""

    def __init__(
        self,
        topic: str,
        options: SubscriptionOptions,
        source: Source[Any],
        handler: Handler,
        drain_timeout: float,
        on_stop: Callable[[Subscription], Any],
    ) -> None:
        self.topic = topic
        self.options = options
        self._source = source
        self._dispatcher = Dispatcher(topic, source, handler, options)
        self._drain_timeout = drain_timeout
        self._on_stop = on_stop
        self._task = asyncio.create_task(
            self._dispatcher.run(), name=f"sub:{topic}:{options.group}"
        )
        self._stopped = False

    @property
    def running(self) -> bool:
        """True until the subscription was stopped or its task ended."""
        return not self._stopped and not self._task.done()

    async def stop(self) -> None:
        """Stop intake, drain handlers within the bound, hand back the rest, close the source."""
        if self._stopped:
            return
        self._stopped = True
        self._task.cancel()
        # asyncio.wait, not `await self._task` under suppress(CancelledError): a caller cancelled
        # while it waits (a shutdown bounded by a time-out) must see its own cancellation.
        await asyncio.wait([self._task])
        if not self._task.cancelled() and (error := self._task.exception()) is not None:
            log.error("subscription to %s ended with an error", self.topic, exc_info=error)
        try:
            await self._dispatcher.stop(self._drain_timeout)
        finally:
            await self._source.close()
            result = self._on_stop(self)
            if asyncio.iscoroutine(result):
                await result

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class BaseBroker(abc.ABC):
    """Policy shared by every backend; subclasses implement the underscore hooks."""

    def __init__(self, *, instance: str | None = None, drain_timeout: float = 5.0) -> None:
        self.instance = validate_name(instance or uuid.uuid4().hex[:12], "instance name")
        if drain_timeout < 0:
            raise InvalidArgument("drain timeout must not be negative")
        self._drain_timeout = drain_timeout
        self._subscriptions: set[Subscription] = set()
        self._inbox: Inbox | None = None
        self._inbox_lock = asyncio.Lock()
        self._announced: dict[tuple[str, str], Presence] = {}
        self._heartbeat: asyncio.Task[None] | None = None
        self._responders_seen: dict[str, float] = {}
        self._connected = False
        self._closed = False

    # -- hooks a backend implements ---------------------------------------------------------

    @abc.abstractmethod
    async def _connect(self) -> None: ...

    @abc.abstractmethod
    async def _disconnect(self) -> None: ...

    @abc.abstractmethod
    async def _publish(self, topic: str, batch: Sequence[Message]) -> None: ...

    @abc.abstractmethod
    async def _open_source(self, topic: str, options: SubscriptionOptions) -> Source[Any]: ...

    @abc.abstractmethod
    async def _open_inbox(self, deliver: Callable[[Message], None]) -> str: ...

    @abc.abstractmethod
    async def _send_reply(self, address: str, reply: Message) -> None: ...

    async def _browse(self, topic: str, limit: int) -> list[Message]:
        raise BrokerError(f"{type(self).__name__} cannot browse topics")

    @abc.abstractmethod
    async def _beat(self, entries: Sequence[Presence]) -> None: ...

    @abc.abstractmethod
    async def _remove_presence(self, entry: Presence) -> None: ...

    @abc.abstractmethod
    async def _list_presence(self, name: str | None) -> list[Presence]: ...

    # -- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Connect to the backend; idempotent."""
        self._check_open()
        if not self._connected:
            await self._connect()
            self._connected = True

    async def close(self) -> None:
        """Stop subscriptions (drain, hand back), fail waiting requests, withdraw, disconnect."""
        if self._closed:
            return
        self._closed = True
        for subscription in list(self._subscriptions):
            try:
                await subscription.stop()
            except Exception:
                log.exception("stopping subscription to %s failed", subscription.topic)
        if self._inbox is not None:
            self._inbox.fail_all(BrokerClosed("the broker was closed while waiting for a reply"))
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        for entry in list(self._announced.values()):
            with contextlib.suppress(Exception):
                await self._remove_presence(entry)
        self._announced.clear()
        if self._connected:
            await self._disconnect()
            self._connected = False

    def _check_open(self) -> None:
        if self._closed:
            raise BrokerClosed("the broker is closed")

    async def _ready(self) -> None:
        self._check_open()
        if not self._connected:
            await self.connect()

    # -- pub/sub ----------------------------------------------------------------------------

    async def publish(self, topic: str, batch: Sequence[Message]) -> None:
        """Publish ``batch`` to ``topic``; returns once the broker holds every message durably."""
        validate_topic(topic)
        if isinstance(batch, Message) or not all(isinstance(m, Message) for m in batch):
            raise InvalidArgument("publish takes a sequence of Message objects")
        if not batch:
            return
        await self._ready()
        await self._publish(topic, batch)

    async def subscribe(
        self, topic: str, handler: Handler, options: SubscriptionOptions
    ) -> Subscription:
        """Consume ``topic`` as ``options.group`` until the subscription is stopped."""
        validate_topic(topic)
        if not isinstance(options, SubscriptionOptions):
            raise InvalidArgument("options must be SubscriptionOptions")
        await self._ready()
        source = await self._open_source(topic, options)
        subscription = Subscription(
            topic, options, source, handler, self._drain_timeout, self._subscriptions.discard
        )
        self._subscriptions.add(subscription)
        return subscription

    async def browse(self, topic: str, limit: int = 100) -> list[Message]:
        """Messages still held for ``topic`` (not acked by every group), oldest first.

        Nothing is delivered or acked: this is how dead letters are listed before a replay.
        """
        validate_topic(topic)
        if not isinstance(limit, int) or limit < 1:
            raise InvalidArgument("browse limit must be a positive integer")
        await self._ready()
        return await self._browse(topic, limit)

    # -- request/reply ----------------------------------------------------------------------

    async def serve(
        self, topic: str, replier: Replier, options: SubscriptionOptions
    ) -> Subscription:
        """Answer requests sent to ``topic``; replicas of the group share the load."""

        async def handle(request: Message) -> Outcome:
            deadline = request.metadata.get(DEADLINE_KEY)
            if deadline is not None and float(deadline) < time.time():
                log.info("skipping expired request %s on %s", request.id, topic)
                return Outcome.SUCCESS
            result = await replier(request)
            if request.reply_to:
                await self._send_reply(request.reply_to, make_reply(request, result))
            return Outcome.SUCCESS

        subscription = await self.subscribe(topic, handle, options)
        entry = Presence(name=topic, instance=self.instance)
        await self.announce(entry)
        subscription._on_stop = lambda sub: self._stop_serving(sub, entry)
        return subscription

    async def _stop_serving(self, subscription: Subscription, entry: Presence) -> None:
        self._subscriptions.discard(subscription)
        await self.withdraw(entry)

    async def request(self, topic: str, message: Message, timeout: float) -> Message:
        """Send a request to ``topic`` and wait for its reply (or NoResponders / RequestTimeout)."""
        validate_topic(topic)
        if not isinstance(message, Message):
            raise InvalidArgument("request takes a Message")
        if not isinstance(timeout, int | float) or timeout <= 0:
            raise InvalidArgument("request timeout must be a positive number of seconds")
        await self._ready()
        if not await self._has_responders(topic):
            raise NoResponders(f"no live instance serves {topic!r}")
        inbox = await self._get_inbox()
        correlation_id, future = inbox.expect()
        metadata = {**message.metadata, DEADLINE_KEY: f"{time.time() + timeout:.3f}"}
        outgoing = Message(
            data=message.data,
            metadata=metadata,
            id=message.id,
            reply_to=inbox.address,
            correlation_id=correlation_id,
        )
        try:
            await self._publish(topic, [outgoing])
        except BaseException:
            future.cancel()
            raise
        return await await_reply(future, topic, timeout)

    async def _get_inbox(self) -> Inbox:
        if self._inbox is None:
            async with self._inbox_lock:
                if self._inbox is None:
                    inbox = Inbox("")
                    inbox.address = await self._open_inbox(inbox.deliver)
                    self._inbox = inbox
        return self._inbox

    async def _has_responders(self, topic: str) -> bool:
        now = time.monotonic()
        if self._responders_seen.get(topic, 0.0) > now:
            return True
        if await self._list_presence(topic):
            self._responders_seen[topic] = now + HEARTBEAT_INTERVAL
            return True
        return False

    # -- presence ---------------------------------------------------------------------------

    async def announce(self, presence: Presence) -> None:
        """Keep ``presence`` alive with a heartbeat until withdrawn or the broker closes."""
        await self._ready()
        self._announced[(presence.name, presence.instance)] = presence
        await self._beat([presence])
        if self._heartbeat is None or self._heartbeat.done():
            self._heartbeat = asyncio.create_task(self._beat_forever(), name="presence")

    async def withdraw(self, presence: Presence) -> None:
        """Remove ``presence`` at once."""
        self._announced.pop((presence.name, presence.instance), None)
        if self._connected:
            await self._remove_presence(presence)

    async def instances(self, name: str | None = None) -> list[Presence]:
        """Live presence entries, of one name or all, oldest first."""
        if name is not None:
            validate_topic(name)
        await self._ready()
        entries = await self._list_presence(name)
        return sorted(entries, key=lambda p: (p.name, p.started))

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_INTERVAL)
            if not self._announced:
                continue
            try:
                await self._beat(list(self._announced.values()))
            except Exception:
                log.warning("presence heartbeat failed; retrying", exc_info=True)
