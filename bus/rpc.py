"""Request/reply on the bus: one inbox per broker, a map correlation id -> future.

A request is an ordinary message published to the service's topic with ``reply_to`` set to the
caller's inbox address and a fresh ``correlation_id``.  The inbox is opened once, on the first
request, and lives as long as the broker; replies resolve futures through the map, a done-callback
removes the entry, and a time-out fails the future.  No lock is held around a call and nothing is
subscribed per call, so any number of requests run at once.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace

from bus.errors import RequestTimeout
from bus.message import Message

log = logging.getLogger("omnibus.bus.rpc")

Replier = Callable[[Message], Awaitable[Message | bytes]]


class Inbox:
    """The futures of the requests this process is waiting for."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._waiting: dict[str, asyncio.Future[Message]] = {}

    def expect(self) -> tuple[str, asyncio.Future[Message]]:
        """A fresh correlation id and the future its reply will resolve."""
        correlation_id = uuid.uuid4().hex
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._waiting[correlation_id] = future
        future.add_done_callback(lambda _: self._waiting.pop(correlation_id, None))
        return correlation_id, future

    def deliver(self, reply: Message) -> None:
        """Resolve the future a reply belongs to; late or unknown replies are dropped."""
        future = self._waiting.get(reply.correlation_id or "")
        if future is None or future.done():
            log.debug("dropping reply for unknown or finished request %s", reply.correlation_id)
            return
        future.set_result(reply)

    def fail_all(self, exc: BaseException) -> None:
        """Fail every waiting request (the broker is closing)."""
        for future in list(self._waiting.values()):
            if not future.done():
                future.set_exception(exc)

    @property
    def waiting(self) -> int:
        """How many requests await their reply."""
        return len(self._waiting)


async def await_reply(future: asyncio.Future[Message], topic: str, timeout: float) -> Message:
    """Wait for a reply, turning a time-out into :class:`RequestTimeout`."""
    try:
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that arrives
        # as the reply does, and a caller being shut down would then never stop.
        async with asyncio.timeout(timeout):
            return await future
    except TimeoutError:
        raise RequestTimeout(f"no reply from {topic!r} within {timeout:g}s") from None


def make_reply(request: Message, result: Message | bytes) -> Message:
    """The reply message for ``request`` carrying ``result``."""
    if isinstance(result, bytes):
        return Message(data=result, correlation_id=request.correlation_id)
    return replace(result, correlation_id=request.correlation_id, reply_to=None)
