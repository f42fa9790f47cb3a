"""Lean Redis connections for the hot paths: one pipelined link, one Pub/Sub listener.

redis-py costs a sidecar more CPU per command than the network does: a pipeline object, a pool
checkout, response callbacks, a retry wrapper.  On the paths that run once per message (XADD of a
publish or a call, PUBLISH of a reply, XACK, a state get or save) that overhead was a third of a
sidecar's time.  These two classes speak RESP2 directly on an asyncio transport, with hiredis
packing commands and parsing replies:

- :class:`RedisLink` multiplexes every caller on one connection.  Commands are written the moment
  they are issued (the transport coalesces the writes of one loop tick into one send) and replies
  come back in the order of the commands, so each caller gets exactly its own replies: a batch
  never mixes one caller's outcome into another's.  A caller that gives up (time-out, cancelled)
  leaves its slot in the queue, so the replies that follow stay aligned.  A lost connection fails
  every caller waiting on it with :class:`BrokerUnavailable`; the next command connects again.
- :class:`RedisListener` holds one Pub/Sub subscription and hands each message to a callback as
  soon as it is parsed, with no task switch.  It reconnects with backoff, resubscribes, and reports
  each loss and each return, since Pub/Sub keeps nothing for a channel nobody listens on.

Both authenticate (``AUTH``), select the database and speak TLS as the component asks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import hiredis
from redis.exceptions import ResponseError

from bus.backoff import Backoff
from bus.errors import BrokerClosed, BrokerError, BrokerUnavailable
from bus.redis.settings import Command, RedisAddress

log = logging.getLogger("omnibus.bus.redis")

RECONNECT = Backoff(initial=0.05, maximum=2.0, jitter=0.1)  # every Redis reconnect's curve


def pack(commands: Sequence[Command]) -> bytes:
    """RESP for ``commands``, each a tuple of words (``("CLIENT", "ID")``, never one
    ``"CLIENT ID"``): str, bytes, int and float arguments, packed by hiredis."""
    return b"".join(hiredis.pack_command(c) for c in commands)


class _TimedOut(BrokerUnavailable):
    """Redis did not answer in time: the connection is closed and the command not retried."""


ErrorCallback = Callable[[BrokerError], None]


class _Pending:
    """Commands written and not yet answered: a caller's future, or the error callback of a
    group posted without waiting (see :meth:`RedisLink.post`)."""

    __slots__ = ("count", "future", "on_error", "replies", "sent")

    def __init__(
        self,
        count: int,
        future: asyncio.Future[list[Any]] | None,
        sent: float,
        on_error: ErrorCallback | None = None,
    ) -> None:
        self.count = count
        self.future = future
        self.on_error = on_error
        self.sent = sent
        self.replies: list[Any] = []

    def settle(self) -> None:
        if self.future is not None:
            if not self.future.done():
                self.future.set_result(self.replies)
        elif self.on_error is not None:
            refused = next((r for r in self.replies if isinstance(r, ResponseError)), None)
            if refused is not None:
                self._report(BrokerError(f"Redis refused a command: {refused}"))

    def fail(self, error: BrokerError) -> None:
        if self.future is not None:
            if not self.future.done():
                self.future.set_exception(error)
        elif self.on_error is not None:
            self._report(error)

    def _report(self, error: BrokerError) -> None:
        assert self.on_error is not None
        try:
            self.on_error(error)
        except Exception:  # called from the protocol's callbacks: never let one escape there
            log.exception("an error callback of the Redis link failed")


class _LinkProtocol(asyncio.Protocol):
    """Matches replies to the commands written, in order.

    One watchdog timer per connection, not one per command, fails the connection when its oldest
    command has waited ``timeout`` seconds: every later command waits behind that one anyway.
    """

    def __init__(self, label: str, timeout: float) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiting: deque[_Pending] = deque()
        self.lost = False
        self._label = label
        self._timeout = timeout
        self._reader = hiredis.Reader(replyError=ResponseError)
        self._unsent: list[bytes] = []
        self._watchdog: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def send(self, commands: Sequence[Command]) -> asyncio.Future[list[Any]]:
        """Queue ``commands``; they go out with every other command of this loop tick."""
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self.queue(commands, future, None)
        return future

    def queue(
        self,
        commands: Sequence[Command],
        future: asyncio.Future[list[Any]] | None,
        on_error: ErrorCallback | None,
    ) -> None:
        loop = asyncio.get_running_loop()
        if not self._unsent:
            loop.call_soon(self._flush)
        self._unsent.append(pack(commands))
        now = loop.time()
        self.waiting.append(_Pending(len(commands), future, now, on_error))
        if self._watchdog is None:
            self._watchdog = loop.call_at(now + self._timeout, self._watch)

    def _watch(self) -> None:
        self._watchdog = None
        if self.lost or not self.waiting:
            return
        due = self.waiting[0].sent + self._timeout
        loop = asyncio.get_running_loop()
        if loop.time() >= due:
            self.fail(_TimedOut(f"Redis at {self._label} did not answer within {self._timeout:g}s"))
        else:
            self._watchdog = loop.call_at(due, self._watch)

    def _flush(self) -> None:
        unsent, self._unsent = self._unsent, []
        if self.lost or self.transport is None:
            return  # connection_lost has failed (or will fail) every waiting caller
        self.transport.write(b"".join(unsent))

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        waiting = self.waiting
        while (reply := self._reader.gets()) is not False:
            if not waiting:
                self.fail(BrokerError(f"Redis sent a reply nobody asked for: {reply!r}"))
                return
            pending = waiting[0]
            pending.replies.append(reply)
            if len(pending.replies) == pending.count:
                waiting.popleft()
                pending.settle()

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f": {exc}" if exc else ""
        self._lose(BrokerUnavailable(f"the connection to Redis was lost{reason}"))

    def fail(self, error: BrokerError) -> None:
        """Close the connection and fail everyone waiting on it with ``error``."""
        self._lose(error)
        if self.transport is not None:
            self.transport.abort()

    def _lose(self, error: BrokerError) -> None:
        self.lost = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        while self.waiting:
            self.waiting.popleft().fail(error)


async def _open(
    address: RedisAddress, protocol_factory: Callable[[], asyncio.Protocol]
) -> asyncio.Protocol:
    context = ssl.create_default_context() if address.tls else None
    try:
        async with asyncio.timeout(address.dial_timeout):
            _, protocol = await asyncio.get_running_loop().create_connection(
                protocol_factory, address.host, address.port, ssl=context
            )
    except (OSError, TimeoutError) as exc:
        raise BrokerUnavailable(f"Redis unreachable at {address.label}: {exc}") from exc
    return protocol


class RedisLink:
    """One pipelined connection shared by every caller; see the module docstring.

    ``run`` returns the raw replies of its commands (RESP2: bytes, int, lists, None; an error
    reply as a :class:`redis.exceptions.ResponseError` instance in its place).  A connection lost
    before the replies came is retried ``retries`` times on a new connection, as a client library
    would; a time-out closes the connection (its state is unknown) and is not retried.
    """

    def __init__(self, address: RedisAddress, *, timeout: float, retries: int = 2) -> None:
        self.address = address
        self._timeout = timeout
        self._retries = retries
        self._protocol: _LinkProtocol | None = None
        self._connecting: asyncio.Lock | None = None
        self._closed = False

    async def run(self, commands: Sequence[Command]) -> list[Any]:
        """Send ``commands`` as one group; their replies, in order."""
        for attempt in range(self._retries + 1):
            protocol = await self._connected()
            try:
                future = protocol.send(commands)
            except Exception as exc:
                raise BrokerError(f"cannot send to Redis: {exc}") from exc
            try:
                return await future
            except _TimedOut:
                raise
            except BrokerUnavailable:
                if self._closed or attempt == self._retries:
                    raise
                await asyncio.sleep(RECONNECT.delay(attempt + 1))
        raise AssertionError("unreachable")  # the loop returns or raises

    async def post(self, commands: Sequence[Command], on_error: ErrorCallback) -> None:
        """Send ``commands`` without waiting for their replies (once connected).

        For writes whose answer nobody waits for on the hot path: a reply to a call, the request
        of a call (whose caller waits for the reply instead).  ``on_error`` gets an error reply
        or the loss of the connection; a posted group is never sent twice.
        """
        protocol = await self._connected()
        protocol.queue(commands, None, on_error)

    async def _connected(self) -> _LinkProtocol:
        if self._closed:
            raise BrokerClosed("the Redis connection is closed")
        protocol = self._protocol
        if protocol is not None and not protocol.lost:
            return protocol
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._protocol is not None and not self._protocol.lost:
                return self._protocol
            opened = await _open(
                self.address, lambda: _LinkProtocol(self.address.label, self._timeout)
            )
            assert isinstance(opened, _LinkProtocol)
            await _handshake(opened, self.address)
            if self._closed:
                opened.fail(BrokerClosed("the Redis connection is closed"))
                raise BrokerClosed("the Redis connection is closed")
            self._protocol = opened
            return opened

    async def close(self) -> None:
        """Close the connection; whoever still waits gets :class:`BrokerClosed`."""
        self._closed = True
        if self._protocol is not None:
            self._protocol.fail(BrokerClosed("the Redis connection was closed"))
            self._protocol = None


async def _handshake(protocol: _LinkProtocol, address: RedisAddress) -> None:
    commands = address.handshake()
    if not commands:
        return
    replies = await protocol.send(commands)  # the watchdog bounds the wait
    for reply in replies:
        if isinstance(reply, ResponseError):
            protocol.fail(BrokerError("login refused"))
            raise BrokerError(f"Redis at {address.label} refused the login: {reply}")


class _ListenerProtocol(asyncio.Protocol):
    def __init__(self, deliver: Callable[[bytes], None]) -> None:
        self._deliver = deliver
        self._reader = hiredis.Reader(replyError=ResponseError)
        self.transport: asyncio.Transport | None = None
        self.confirmed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while (reply := self._reader.gets()) is not False:
            if isinstance(reply, ResponseError):
                self._settle(reply)
                continue
            if not isinstance(reply, list) or not reply:
                continue
            kind = reply[0]
            if kind == b"message" and len(reply) == 3:
                try:
                    self._deliver(reply[2])
                except Exception:
                    log.exception("the Pub/Sub callback failed")
            elif kind == b"subscribe":
                self._settle(None)

    def _settle(self, error: ResponseError | None) -> None:
        if self.confirmed.done():
            if error is not None:
                log.warning("Redis Pub/Sub error: %s", error)
            return
        if error is None:
            self.confirmed.set_result(None)
        else:
            self.confirmed.set_exception(BrokerError(f"Redis refused the subscription: {error}"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(str(exc) if exc else "closed by Redis")
        if not self.confirmed.done():
            self.confirmed.set_exception(BrokerUnavailable("the Pub/Sub connection was lost"))


class RedisListener:
    """One Pub/Sub channel, each message handed to ``deliver`` as it is parsed.

    ``on_lost(reason)`` is called when the connection drops and again once it is re-established
    (messages published in between are gone).  :meth:`start` returns once the first subscription
    is confirmed.
    """

    def __init__(
        self,
        address: RedisAddress,
        channel: str,
        deliver: Callable[[bytes], None],
        on_lost: Callable[[str], None],
        *,
        timeout: float,
        client_name: str | None = None,
    ) -> None:
        self.address = address
        self.client_name = client_name
        self.channel = channel
        self._deliver = deliver
        self._on_lost = on_lost
        self._timeout = timeout
        self._protocol: _ListenerProtocol | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    @property
    def connected(self) -> bool:
        """True while the subscription is confirmed and the connection up."""
        return self._ready.is_set()

    async def wait_connected(self, timeout: float) -> None:
        """Return once subscribed; BrokerUnavailable if that takes over ``timeout`` seconds."""
        if self._ready.is_set():
            return
        try:
            async with asyncio.timeout(timeout):
                await self._ready.wait()
        except TimeoutError:
            raise BrokerUnavailable(
                f"the Redis Pub/Sub connection to {self.address.label} is not back"
            ) from None

    async def start(self) -> None:
        """Subscribe; raises BrokerUnavailable/BrokerError if the first subscription fails."""
        await self._subscribe()
        self._ready.set()
        self._task = asyncio.create_task(self._keep(), name=f"listen:{self.channel}")

    async def _subscribe(self) -> None:
        opened = await _open(self.address, lambda: _ListenerProtocol(self._deliver))
        assert isinstance(opened, _ListenerProtocol)
        assert opened.transport is not None
        try:
            handshake = self.address.handshake(self.client_name)
            opened.transport.write(pack([*handshake, ("SUBSCRIBE", self.channel)]))
            async with asyncio.timeout(self._timeout):
                await opened.confirmed
        except BaseException:
            opened.transport.abort()
            if opened.confirmed.done() and not opened.confirmed.cancelled():
                opened.confirmed.exception()  # retrieved: the error raised here says it all
            raise
        self._protocol = opened

    async def _keep(self) -> None:
        attempt = 0
        while True:
            assert self._protocol is not None
            reason = await self._protocol.closed
            self._ready.clear()
            self._on_lost(f"Redis Pub/Sub connection lost: {reason}")
            while True:
                attempt += 1
                await asyncio.sleep(RECONNECT.delay(attempt))
                try:
                    await self._subscribe()
                except Exception as exc:  # keep trying whatever failed: the inbox must return
                    log.warning("Redis Pub/Sub: reconnecting to %s: %s", self.address.label, exc)
                    continue
                break
            attempt = 0
            # First fail whoever sent while the connection was away, then let new sends in.
            self._on_lost("the Redis Pub/Sub connection was re-established")
            self._ready.set()

    async def close(self) -> None:
        """Unsubscribe by closing the connection; stop reconnecting."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.abort()
        self._protocol = None
