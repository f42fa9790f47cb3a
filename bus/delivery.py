"""The delivery engine: policy that lives once, outside the backends.

A backend knows *how* to fetch, ack, schedule a retry, dead-letter and hand back a delivery (its
:class:`Source`); the :class:`Dispatcher` decides *when*.  For every delivery it runs the handler
under the processing time-out and settles the outcome:

- ``SUCCESS``: acked; acks are coalesced into one backend call per ``ACK_BATCH`` completions or
  ``ACK_LINGER`` seconds, whichever comes first.  At a steady trickle of messages (where each
  fetch brings one) this turns one ack round trip per message into one per few milliseconds; an
  ack held back a few milliseconds only widens the window in which a crash causes a duplicate,
  never a loss.  Stopping flushes what is waiting.
- ``RETRY`` (also an exception or a time-out): redelivered after the retry policy's backoff,
  durably scheduled by the backend; after ``max_attempts`` deliveries, dead-lettered instead.
- ``DROP``: published to the dead-letter topic and acked, as one step where the backend can.
- cancellation (shutdown): nothing is acked; the backend hands the delivery back.

Fetching asks for at most as many deliveries as there are free handler slots, so nothing waits in
a local buffer while its lease runs out.

The processing time-out is kept by one watchdog per subscription rather than a timer per
delivery (``asyncio.timeout`` was a fifth of the bus-only consume path in a profile): every
``min(timeout / 10, 1 s)`` it cancels the handlers past their deadline, so a handler is stopped
between ``timeout`` and ``timeout`` + a tenth of it (at most a second) after it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, Protocol, TypeVar

from bus.backoff import Backoff
from bus.message import Message, Outcome
from bus.options import SubscriptionOptions

log = logging.getLogger("omnibus.bus")

Handler = Callable[[Message], Awaitable[Outcome]]

ACK_BATCH = 64  # acks waiting that are sent at once, without lingering
ACK_LINGER = 0.004  # seconds the first waiting ack waits for others to join it


# A source whose fetch fails (its broker is unreachable) is retried along this curve.
_REFETCH = Backoff(initial=0.1, maximum=5.0, jitter=0.1)


class Delivery(Protocol):
    """One delivery of a message to a consumer; backends add their own handle fields."""

    @property
    def message(self) -> Message: ...


D = TypeVar("D", bound=Delivery)


class Source(Protocol[D]):
    """The backend's side of one subscription: how to fetch and settle deliveries."""

    async def fetch(self, limit: int) -> Sequence[D]:
        """Wait for and lease up to ``limit`` deliveries; an empty result means: ask again."""
        ...

    async def ack(self, deliveries: Sequence[D]) -> None:
        """Acknowledge deliveries whose handler returned SUCCESS."""
        ...

    async def retry(self, delivery: D, delay: float) -> None:
        """Keep the message and deliver it again, with ``attempt + 1``, after ``delay`` seconds."""
        ...

    async def dead_letter(self, delivery: D, topic: str) -> None:
        """Publish the message to ``topic`` and acknowledge it, atomically where possible."""
        ...

    async def release(self, deliveries: Sequence[D]) -> None:
        """Hand back unsettled deliveries at shutdown so that they are redelivered soon."""
        ...

    async def close(self) -> None:
        """Stop fetching and free the backend's resources of this subscription."""
        ...


async def run_handler(handler: Handler, message: Message) -> Outcome:
    """Run ``handler``; an exception counts as RETRY, cancellation propagates."""
    try:
        outcome = await handler(message)
    except Exception:
        log.exception("handler failed on message %s (attempt %d)", message.id, message.attempt)
        return Outcome.RETRY
    if not isinstance(outcome, Outcome):
        log.error("handler returned %r, not an Outcome; treating it as RETRY", outcome)
        return Outcome.RETRY
    return outcome


class Dispatcher(Generic[D]):
    """Runs one subscription: fetch, handle with bounded concurrency, settle."""

    def __init__(
        self, topic: str, source: Source[D], handler: Handler, options: SubscriptionOptions
    ) -> None:
        self._topic = topic
        self._source = source
        self._handler = handler
        self._options = options
        self._dead_letter_topic = options.dead_letter_for(topic)
        self._inflight: dict[asyncio.Task[None], D] = {}
        self._deadlines: dict[asyncio.Task[None], float] = {}  # loop.time() of the time-out
        self._expired: set[asyncio.Task[None]] = set()  # cancelled by the watchdog
        self._slot_free = asyncio.Event()
        self._to_ack: list[D] = []
        self._ack_wanted = asyncio.Event()
        self._stopping = False
        self._refetch = _REFETCH.retrying(f"fetching from {topic}", on=Exception, logger=log)

    async def run(self) -> None:
        """Fetch and dispatch until :meth:`stop` is called or the task is cancelled."""
        helpers = [
            asyncio.create_task(self._flush_acks(), name=f"acks:{self._topic}"),
            asyncio.create_task(self._watch_deadlines(), name=f"deadlines:{self._topic}"),
        ]
        try:
            await self._fetch_loop()
        finally:
            for helper in helpers:
                helper.cancel()
            for helper in helpers:
                with contextlib.suppress(asyncio.CancelledError):
                    await helper

    async def _fetch_loop(self) -> None:
        options = self._options
        while not self._stopping:
            free = options.concurrency - len(self._inflight)
            if free <= 0:
                self._slot_free.clear()
                await self._slot_free.wait()
                continue
            limit = min(free, options.batch_size)
            try:  # the common case without tenacity's bookkeeping: it runs once per fetch
                batch = await self._source.fetch(limit)
            except Exception:
                log.exception("fetching from %s failed; retrying", self._topic)
                batch = await self._refetch(self._source.fetch, limit)
            deadline = asyncio.get_running_loop().time() + options.processing_timeout
            for delivery in batch:
                task = asyncio.create_task(self._process(delivery))
                self._inflight[task] = delivery
                self._deadlines[task] = deadline
                task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.pop(task, None)
        self._deadlines.pop(task, None)
        self._expired.discard(task)
        self._slot_free.set()

    async def _watch_deadlines(self) -> None:
        interval = self._options.watchdog_interval  # the lease allows for this lateness
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            for task, deadline in self._deadlines.items():
                if deadline <= now and task not in self._expired:
                    self._expired.add(task)
                    task.cancel()

    async def _process(self, delivery: D) -> None:
        message = delivery.message
        task = asyncio.current_task()
        try:
            outcome = await run_handler(self._handler, message)
        except asyncio.CancelledError:
            if task not in self._expired:
                raise  # shutdown: nothing is settled, the backend hands the delivery back
            outcome = Outcome.RETRY
        if task in self._expired:  # a time-out, even if the handler swallowed the cancellation
            assert task is not None
            task.uncancel()
            self._deadlines.pop(task, None)
            log.warning(
                "handler timed out after %.1fs on %s (attempt %d)",
                self._options.processing_timeout,
                message.id,
                message.attempt,
            )
            outcome = Outcome.RETRY
        try:
            await self._settle(delivery, outcome)
        except Exception:
            # The broker still holds the message; it comes back after its lease runs out.
            log.exception("settling %s of %s as %s failed", message.id, self._topic, outcome.name)

    async def _settle(self, delivery: D, outcome: Outcome) -> None:
        message = delivery.message
        if outcome is Outcome.SUCCESS:
            self._to_ack.append(delivery)
            if len(self._to_ack) == 1 or len(self._to_ack) >= ACK_BATCH:
                self._ack_wanted.set()
        elif outcome is Outcome.RETRY and not self._options.retry.exhausted(message.attempt):
            await self._source.retry(delivery, self._options.retry.delay(message.attempt))
        else:
            if outcome is Outcome.RETRY:
                log.warning(
                    "message %s of %s failed %d times; dead-lettering to %s",
                    message.id,
                    self._topic,
                    message.attempt,
                    self._dead_letter_topic,
                )
            await self._source.dead_letter(delivery, self._dead_letter_topic)

    async def _flush_acks(self) -> None:
        while True:
            await self._ack_wanted.wait()
            if len(self._to_ack) < ACK_BATCH:
                self._ack_wanted.clear()
                with contextlib.suppress(TimeoutError):  # woken early by a full batch
                    async with asyncio.timeout(ACK_LINGER):
                        await self._ack_wanted.wait()
            await self._ack_pending()

    async def _ack_pending(self) -> None:
        self._ack_wanted.clear()
        batch, self._to_ack = self._to_ack, []
        if not batch:
            return
        try:
            await self._source.ack(batch)
        except asyncio.CancelledError:
            self._to_ack[:0] = batch
            raise
        except Exception:
            log.exception(
                "acking %d deliveries of %s failed; they will be redelivered",
                len(batch),
                self._topic,
            )

    async def stop(self, drain_timeout: float) -> None:
        """Stop intake, let handlers finish within ``drain_timeout``, cancel the rest, hand back."""
        self._stopping = True
        self._slot_free.set()
        if self._inflight:
            _, pending = await asyncio.wait(list(self._inflight), timeout=drain_timeout)
            for task in pending:
                task.cancel()
            unsettled = [self._inflight[t] for t in pending if t in self._inflight]
            if pending:
                await asyncio.wait(pending)
            if unsettled:
                with contextlib.suppress(Exception):
                    await self._source.release(unsettled)
        await self._ack_pending()
