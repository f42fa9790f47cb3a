"""The consuming side of the SQLite broker: one Source per subscription, leasing from the file."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from bus.errors import BrokerClosed
from bus.options import SubscriptionOptions
from bus.sqlite._schema import SqliteDelivery
from bus.sqlite._store import SqliteStore
from bus.sqlite.settings import SqliteSettings

T = TypeVar("T")


class FileHost(Protocol):
    """What a source needs of its broker (the broker imports the source, never the reverse)."""

    instance: str
    settings: SqliteSettings
    store: SqliteStore

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the database thread."""

    def touched(self, topic: str) -> None:
        """Note acks on ``topic`` for the next trim."""

    def changed(self, topic: str) -> None:
        """Wake the consumers of ``topic`` here and in other processes."""

    def forget(self, topic: str, wake: asyncio.Event) -> None:
        """Stop waking ``wake``."""


class SqliteSource:
    """One consumer of a group; consumers of the same group (in any process) compete."""

    def __init__(self, broker: FileHost, topic: str, options: SubscriptionOptions) -> None:
        self._broker = broker
        self._topic = topic
        self._group = options.group
        self._lease = options.lease
        self._consumer = f"{broker.instance}.{uuid.uuid4().hex[:8]}"
        self.wake = asyncio.Event()
        self._closed = False
        self._drained = False  # the last claim returned fewer deliveries than asked for
        self._next_due: float | None = None  # the group's next due time after that claim

    async def fetch(self, limit: int) -> Sequence[SqliteDelivery]:
        broker = self._broker
        while not self._closed:
            if self._drained and not self.wake.is_set():
                # The last claim took all there was and nothing was announced since: wait for
                # news (or the next due time) rather than asking the file again.
                await self._wait(self._next_due)
            self._drained = False
            self.wake.clear()
            deliveries, next_due = await broker.call(
                broker.store.claim, self._topic, self._group, self._consumer, limit, self._lease
            )
            if deliveries:
                self._drained, self._next_due = len(deliveries) < limit, next_due
                return deliveries
            await self._wait(next_due)
        raise BrokerClosed("subscription closed")

    async def _wait(self, next_due: float | None) -> None:
        """Until woken, the group's next due time or the redelivery interval, whichever first."""
        timeout = self._broker.settings.redeliver_interval
        if next_due is not None:
            timeout = min(timeout, max(next_due - time.time(), 0.001))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self.wake.wait()

    async def ack(self, deliveries: Sequence[SqliteDelivery]) -> None:
        seqs = [d.seq for d in deliveries]
        store = self._broker.store
        await self._broker.call(store.ack, self._topic, self._group, seqs, self._consumer)
        self._broker.touched(self._topic)

    async def retry(self, delivery: SqliteDelivery, delay: float) -> None:
        store = self._broker.store
        await self._broker.call(
            store.retry, self._topic, self._group, delivery.seq, self._consumer, delay
        )
        self._broker.changed(self._topic)

    async def dead_letter(self, delivery: SqliteDelivery, topic: str) -> None:
        store = self._broker.store
        await self._broker.call(
            store.dead_letter, self._topic, self._group, delivery.seq, topic, self._consumer
        )
        self._broker.touched(self._topic)
        self._broker.changed(topic)

    async def release(self, deliveries: Sequence[SqliteDelivery]) -> None:
        seqs = [d.seq for d in deliveries]
        store = self._broker.store
        await self._broker.call(store.release, self._topic, self._group, self._consumer, seqs)
        self._broker.changed(self._topic)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.wake.set()
        self._broker.forget(self._topic, self.wake)
        # Deliveries claimed by a fetch that was cancelled reached no handler: hand them back.
        store = self._broker.store
        await self._broker.call(store.release, self._topic, self._group, self._consumer, None)
        self._broker.changed(self._topic)
