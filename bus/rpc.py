"""Request/reply on the bus: two request modes, one inbox per broker, error replies.

A request is a message published to the service's topic with ``reply_to`` set and a fresh
``correlation_id``.  Two modes, chosen by the caller and stated in the request's metadata:

- :attr:`RequestMode.CALL` (sync invocation, state): at most once.  The request carries its
  time-to-live as a duration (``omnibus-ttl-ms``), never a wall-clock instant; a server skips a
  request that waited longer than that (measured on the broker's clock where the backend can) and
  never executes a redelivered one (it answers ``REDELIVERED`` instead).  ``reply_to`` is the
  caller's private inbox, opened once per broker; replies resolve futures through a map
  correlation id -> future, a done-callback removes the entry, a time-out fails the future.  No
  lock is held around a call and nothing is subscribed per call.  Every call-mode server of a
  topic competes in one group (:data:`CALL_GROUP`), so two groups never both execute one call.
- :attr:`RequestMode.DURABLE` (async invocation): an ordinary at-least-once message whose
  ``reply_to`` is a *topic*.  The server acks only after the reply is published there, RETRYs a
  failure with the subscription's backoff, dead-letters after the last attempt (with an error
  reply), and answers a request it already answered from its :class:`Replies` record instead of
  running the work again (key: ``omnibus-idempotency-key``, else the message id).

A replier that raises answers with an error reply at once: metadata ``omnibus-error`` = a code
(the exception's ``code`` attribute, else ``INTERNAL``), data = the message; the caller raises
:class:`~bus.errors.RemoteError`.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Protocol

from bus.errors import RemoteError, RequestTimeout
from bus.message import Message

log = logging.getLogger("omnibus.bus.rpc")

Replier = Callable[[Message], Awaitable[Message | bytes]]

MODE_KEY = "omnibus-mode"
TTL_KEY = "omnibus-ttl-ms"
ERROR_KEY = "omnibus-error"
IDEMPOTENCY_KEY = "omnibus-idempotency-key"
CALL_GROUP = "omnibus-call"
INTERNAL = "INTERNAL"
REDELIVERED = "REDELIVERED"


class RequestMode(enum.Enum):
    """How a request travels; see the module docstring."""

    CALL = "call"
    DURABLE = "durable"


class Replies(Protocol):
    """Where a durable server records what it answered, so a redelivery is not run twice."""

    async def recorded(self, key: str) -> Message | None:
        """The reply recorded under ``key``, if any."""
        ...

    async def record(self, key: str, reply: Message) -> None:
        """Record ``reply`` under ``key``."""
        ...


class Inbox:
    """The futures of the requests this process is waiting for."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._waiting: dict[str, asyncio.Future[Message]] = {}
        self._ids = itertools.count(1)  # unique within the inbox, whose address is unique

    def expect(self) -> tuple[str, asyncio.Future[Message]]:
        """A fresh correlation id and the future its reply will resolve."""
        correlation_id = f"{next(self._ids):x}"
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._waiting[correlation_id] = future
        return correlation_id, future

    def forget(self, correlation_id: str) -> None:
        """Stop waiting under ``correlation_id`` (answered, timed out or cancelled)."""
        self._waiting.pop(correlation_id, None)

    def deliver(self, reply: Message) -> None:
        """Resolve the future a reply belongs to; late or unknown replies are dropped."""
        future = self._waiting.pop(reply.correlation_id or "", None)
        if future is None or future.done():
            log.debug("dropping reply for unknown or finished request %s", reply.correlation_id)
            return
        future.set_result(reply)

    def fail(self, correlation_id: str, exc: BaseException) -> None:
        """Fail the one request waiting under ``correlation_id`` (its request was not sent)."""
        future = self._waiting.pop(correlation_id, None)
        if future is not None and not future.done():
            future.set_exception(exc)

    def fail_all(self, exc: BaseException) -> None:
        """Fail every waiting request (the broker is closing)."""
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(exc)

    @property
    def waiting(self) -> int:
        """How many requests await their reply."""
        return len(self._waiting)


async def await_reply(future: asyncio.Future[Message], topic: str, timeout: float) -> Message:
    """Wait for a reply, turning a time-out into :class:`RequestTimeout`.

    The time-out fails the future itself (one timer, no context manager: this runs once per
    call), so a cancellation of the caller still reaches it as a cancellation.
    """
    timer = asyncio.get_running_loop().call_later(timeout, _expire, future, topic, timeout)
    try:
        return await future
    finally:
        timer.cancel()


def _expire(future: asyncio.Future[Message], topic: str, timeout: float) -> None:
    if not future.done():
        future.set_exception(RequestTimeout(f"no reply from {topic!r} within {timeout:g}s"))


def make_reply(request: Message, result: Message | bytes) -> Message:
    """The reply message for ``request`` carrying ``result``."""
    if isinstance(result, bytes):
        return Message(data=result, correlation_id=request.correlation_id)
    return replace(result, correlation_id=request.correlation_id, reply_to=None)


def error_code(exc: BaseException) -> str:
    """The code an error reply carries for ``exc``: its ``code`` attribute, else INTERNAL."""
    code = getattr(exc, "code", None)
    return code if isinstance(code, str) and code else INTERNAL


def error_reply(request: Message, code: str, text: str) -> Message:
    """The error reply for ``request``."""
    return Message(
        data=text.encode("utf-8", "replace"),
        metadata={ERROR_KEY: code},
        correlation_id=request.correlation_id,
    )


def raise_for_error(reply: Message) -> Message:
    """Return ``reply``, or raise :class:`RemoteError` if it is an error reply."""
    code = reply.metadata.get(ERROR_KEY)
    if code is not None:
        raise RemoteError(code, reply.data.decode("utf-8", "replace"))
    return reply


def call_ttl(request: Message) -> float | None:
    """The time-to-live a call-mode request carries, in seconds (None if it carries none)."""
    raw = request.metadata.get(TTL_KEY)
    if raw is None:
        return None
    try:
        return max(0.0, int(raw) / 1000)
    except ValueError:
        return 0.0


def idempotency_key(request: Message) -> str:
    """The key under which a durable request's reply is recorded."""
    return request.metadata.get(IDEMPOTENCY_KEY) or request.id
