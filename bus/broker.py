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
from dataclasses import replace
from types import TracebackType
from typing import Any, Protocol, Self

from bus.delivery import Dispatcher, Handler, Source
from bus.errors import (
    BrokerClosed,
    BrokerError,
    InvalidArgument,
    NoResponders,
    ReplyLost,
    RequestTimeout,
)
from bus.message import Message, Outcome, validate_name, validate_topic
from bus.options import SubscriptionOptions
from bus.presence import HEARTBEAT_INTERVAL, KIND_KEY, SERVICE, Presence, is_service
from bus.rpc import (
    CALL_GROUP,
    IDEMPOTENCY_KEY,
    MODE_KEY,
    REDELIVERED,
    TTL_KEY,
    Inbox,
    Replier,
    Replies,
    RequestMode,
    await_reply,
    call_ttl,
    error_code,
    error_reply,
    idempotency_key,
    make_reply,
    raise_for_error,
)

log = logging.getLogger("omnibus.bus")

_REDELIVERED_TEXT = "the serving instance stopped during this call; it is not run twice"


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
        self,
        topic: str,
        replier: Replier,
        options: SubscriptionOptions,
        *,
        mode: RequestMode = RequestMode.CALL,
        replies: Replies | None = None,
    ) -> Subscription:
        """Answer requests sent to ``topic`` in ``mode``; replicas share the load."""
        ...

    async def request(
        self, topic: str, message: Message, timeout: float, *, mode: RequestMode = RequestMode.CALL
    ) -> Message:
        """Call ``topic`` and wait for its reply."""
        ...

    async def submit(
        self, topic: str, message: Message, *, reply_to: str, idempotency_key: str | None = None
    ) -> str:
        """Publish a durable request whose reply goes to the topic ``reply_to``."""
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

    async def instances(self, name: str | None = None, kind: str | None = None) -> list[Presence]:
        """Live presence entries, of one name or all, of one kind or all."""
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
        self._announced: dict[tuple[str, str, str], Presence] = {}
        self._heartbeat: asyncio.Task[None] | None = None
        self._responders_seen: dict[str, float] = {}
        self._local_servers: dict[str, list[Replier]] = {}
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
        self,
        topic: str,
        replier: Replier,
        options: SubscriptionOptions,
        *,
        mode: RequestMode = RequestMode.CALL,
        replies: Replies | None = None,
    ) -> Subscription:
        """Answer requests sent to ``topic`` in ``mode``; replicas of the group share the load.

        Call mode ignores ``options.group``: every call-mode server of a topic competes in
        :data:`~bus.rpc.CALL_GROUP`, so two groups never both execute one call.
        """
        if not isinstance(mode, RequestMode):
            raise InvalidArgument("mode must be a RequestMode")
        if mode is RequestMode.CALL:
            options = replace(options, group=CALL_GROUP)
            handle = self._call_handler(topic, replier)
        else:
            handle = self._durable_handler(topic, replier, options, replies)
        subscription = await self.subscribe(topic, handle, options)
        entry = Presence(name=topic, instance=self.instance, metadata={KIND_KEY: SERVICE})
        if mode is RequestMode.CALL:
            self._local_servers.setdefault(topic, []).append(replier)
        await self.announce(entry)
        subscription._on_stop = lambda sub: self._stop_serving(sub, entry, replier)
        return subscription

    def _call_handler(self, topic: str, replier: Replier) -> Handler:
        async def handle(request: Message) -> Outcome:
            if request.attempt > 1:
                # At most once: the instance that took this call stopped before it answered, and
                # running it again could do the work twice.
                await self._reply(request, error_reply(request, REDELIVERED, _REDELIVERED_TEXT))
                return Outcome.SUCCESS
            ttl = call_ttl(request)
            age = self._call_age(request)
            remaining = None if ttl is None else ttl - (age or 0.0)
            if remaining is not None and remaining <= 0:
                log.info("skipping call %s on %s: its caller gave up", request.id, topic)
                return Outcome.SUCCESS
            try:
                async with asyncio.timeout(remaining):
                    reply = await self._answer(request, replier)
            except TimeoutError:
                log.info("call %s on %s outlived its caller's time-out", request.id, topic)
                return Outcome.SUCCESS
            await self._reply(request, reply)
            return Outcome.SUCCESS

        return handle

    def _durable_handler(
        self, topic: str, replier: Replier, options: SubscriptionOptions, replies: Replies | None
    ) -> Handler:
        async def handle(request: Message) -> Outcome:
            key = idempotency_key(request)
            if replies is not None and (previous := await replies.recorded(key)) is not None:
                log.info("request %s on %s was answered before; sending that reply", key, topic)
                await self._reply_durably(request, previous)
                return Outcome.SUCCESS
            try:
                reply = make_reply(request, await replier(request))
            except Exception as exc:
                if not options.retry.exhausted(request.attempt):
                    raise
                log.warning("request %s on %s failed on its last attempt", request.id, topic)
                reply = error_reply(request, error_code(exc), str(exc))
                await self._reply_durably(request, reply)
                return Outcome.DROP
            if replies is not None:
                await replies.record(key, reply)
            await self._reply_durably(request, reply)
            return Outcome.SUCCESS

        return handle

    async def _answer(self, request: Message, replier: Replier) -> Message:
        """The replier's answer to ``request``, or an error reply if it raised."""
        try:
            return make_reply(request, await replier(request))
        except Exception as exc:
            log.warning("replier failed on request %s", request.id, exc_info=True)
            return error_reply(request, error_code(exc), str(exc) or type(exc).__name__)

    async def _reply(self, request: Message, reply: Message) -> None:
        if request.reply_to:
            await self._send_reply(request.reply_to, reply)

    async def _reply_durably(self, request: Message, reply: Message) -> None:
        if request.reply_to:
            await self.publish(request.reply_to, [replace(reply, id=request.id)])

    async def _stop_serving(
        self, subscription: Subscription, entry: Presence, replier: Replier
    ) -> None:
        self._subscriptions.discard(subscription)
        local = self._local_servers.get(entry.name, [])
        if replier in local:
            local.remove(replier)
            if not local:
                del self._local_servers[entry.name]
        self._responders_seen.pop(entry.name, None)
        await self.withdraw(entry)

    async def request(
        self,
        topic: str,
        message: Message,
        timeout: float,
        *,
        mode: RequestMode = RequestMode.CALL,
    ) -> Message:
        """Call ``topic`` and wait for its reply.

        Raises :class:`NoResponders` at once when nobody serves the topic, :class:`RequestTimeout`,
        :class:`RemoteError` for an error reply, :class:`ReplyLost` if the inbox lost its
        connection while waiting.  Durable requests go through :meth:`submit`.
        """
        validate_topic(topic)
        if mode is not RequestMode.CALL:
            raise InvalidArgument("request() makes calls; durable requests go through submit()")
        if not isinstance(message, Message):
            raise InvalidArgument("request takes a Message")
        if not isinstance(timeout, int | float) or timeout <= 0:
            raise InvalidArgument("request timeout must be a positive number of seconds")
        await self._ready()
        local = self._local_servers.get(topic)
        if local:
            return await self._call_locally(topic, local[0], message, timeout)
        if not await self._has_responders(topic):
            raise NoResponders(f"no live instance serves {topic!r}")
        inbox = await self._get_inbox()
        await self._inbox_connected(timeout)
        correlation_id, future = inbox.expect()
        metadata = {**message.metadata, MODE_KEY: RequestMode.CALL.value}
        metadata[TTL_KEY] = str(max(1, int(timeout * 1000)))
        outgoing = Message(
            data=message.data,
            metadata=metadata,
            id=message.id,
            reply_to=inbox.address,
            correlation_id=correlation_id,
        )
        try:
            await self._publish_call(topic, outgoing, timeout)
            reply = await await_reply(future, topic, timeout)
        finally:
            inbox.forget(correlation_id)
            future.cancel()  # a no-op once answered
        return raise_for_error(reply)

    async def _call_locally(
        self, topic: str, replier: Replier, message: Message, timeout: float
    ) -> Message:
        """A call to a topic this broker serves itself: no broker round trip, same semantics."""
        request = replace(message, topic=topic, correlation_id=message.correlation_id or "local")
        try:
            async with asyncio.timeout(timeout):
                reply = await self._answer(request, replier)
        except TimeoutError:
            raise RequestTimeout(f"no reply from {topic!r} within {timeout:g}s") from None
        return raise_for_error(reply)

    async def submit(
        self,
        topic: str,
        message: Message,
        *,
        reply_to: str,
        idempotency_key: str | None = None,
    ) -> str:
        """Publish a durable request; its reply will be published to the topic ``reply_to``.

        Returns the request's id once the broker holds it durably; nobody needs to serve
        ``topic`` yet (the request waits for its first server).
        """
        validate_topic(topic)
        validate_topic(reply_to)
        if not isinstance(message, Message):
            raise InvalidArgument("submit takes a Message")
        metadata = {**message.metadata, MODE_KEY: RequestMode.DURABLE.value}
        if idempotency_key is not None:
            if not isinstance(idempotency_key, str) or not idempotency_key:
                raise InvalidArgument("idempotency key must be a non-empty string")
            metadata[IDEMPOTENCY_KEY] = idempotency_key
        outgoing = replace(
            message, metadata=metadata, reply_to=reply_to, correlation_id=message.id, attempt=1
        )
        await self.publish(topic, [outgoing])
        return outgoing.id

    # -- hooks of request/reply a backend may refine -----------------------------------------

    def _call_age(self, request: Message) -> float | None:
        """Seconds ``request`` waited in the broker, on one clock; None when unknown.

        Unknown means the server measures the time-to-live from the moment it took the call.
        """
        return None

    async def _publish_call(self, topic: str, request: Message, ttl: float) -> None:
        """Publish a call-mode request that is worthless after ``ttl`` seconds."""
        await self._publish(topic, [request])

    async def _inbox_connected(self, timeout: float) -> None:
        """Wait (at most ``timeout`` s) until the inbox can receive; a backend whose inbox
        reconnects overrides this, so a call made during an outage waits for the inbox rather
        than sending a request whose reply nobody would hear."""
        return None

    def _inbox_lost(self, reason: str) -> None:
        """The inbox reconnected: replies sent meanwhile may be gone, so fail who waits for one."""
        if self._inbox is not None and self._inbox.waiting:
            log.warning("reply inbox lost its connection (%s); failing waiting requests", reason)
            self._inbox.fail_all(ReplyLost(f"the reply inbox lost its connection: {reason}"))

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
        if any(is_service(p) for p in await self._list_presence(topic)):
            self._responders_seen[topic] = now + HEARTBEAT_INTERVAL
            return True
        return False

    # -- presence ---------------------------------------------------------------------------

    async def announce(self, presence: Presence) -> None:
        """Keep ``presence`` alive with a heartbeat until withdrawn or the broker closes."""
        await self._ready()
        self._announced[(presence.name, presence.instance, presence.kind)] = presence
        await self._beat([presence])
        if self._heartbeat is None or self._heartbeat.done():
            self._heartbeat = asyncio.create_task(self._beat_forever(), name="presence")

    async def withdraw(self, presence: Presence) -> None:
        """Remove ``presence`` at once."""
        self._announced.pop((presence.name, presence.instance, presence.kind), None)
        if self._connected:
            await self._remove_presence(presence)

    async def instances(self, name: str | None = None, kind: str | None = None) -> list[Presence]:
        """Live presence entries, of one name or all, of one kind (``app``, ``service``) or all."""
        if name is not None:
            validate_topic(name)
        await self._ready()
        entries = [p for p in await self._list_presence(name) if kind is None or p.kind == kind]
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
