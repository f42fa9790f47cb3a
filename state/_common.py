"""Small helpers shared by the store modules (private to ``state``)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from types import TracebackType

from state.errors import StoreUnavailable
from state.store import Concurrency, DeleteRequest, SetRequest


def given_etag(request: SetRequest | DeleteRequest) -> str | None:
    """The etag to check, ``None`` when none was given (Dapr treats ``""`` as none)."""
    return request.etag or None


def needs_absent(request: SetRequest) -> bool:
    """First-write without an etag: the save succeeds only if the key does not exist yet."""
    return request.etag in (None, "") and request.concurrency is Concurrency.FIRST_WRITE


def expiry_epoch(ttl: int | None, now: float | None = None) -> float | None:
    """Seconds since the epoch when a value saved now with ``ttl`` expires; None = never."""
    if ttl is None or ttl < 0:
        return None
    return (time.time() if now is None else now) + ttl


def epoch_to_datetime(epoch: float | None) -> datetime | None:
    """An aware UTC datetime, or None."""
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)


class InFlight:
    """Counts a store's running operations, so that ``close`` lets them finish first."""

    def __init__(self) -> None:
        self._count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def __aenter__(self) -> None:
        self._count += 1
        self._idle.clear()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._count -= 1
        if self._count == 0:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> None:
        """Return once no operation runs, or after ``timeout`` seconds."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)


class PeriodicPurge:
    """Deletes a store's expired rows every ``interval`` seconds (``cleanupInterval``), in a task.

    A purge that fails because the backend is down is tried again at the next interval.
    """

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None

    def start(self, interval: float, purge: Callable[[], Awaitable[object]]) -> None:
        """Start purging, unless ``interval`` is 0 or negative (disabled)."""
        if interval > 0 and self._task is None:
            self._task = asyncio.create_task(self._run(interval, purge))

    async def stop(self) -> None:
        """Stop purging (idempotent)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @staticmethod
    async def _run(interval: float, purge: Callable[[], Awaitable[object]]) -> None:
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(StoreUnavailable):
                await purge()
