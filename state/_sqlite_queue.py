"""Work that callers queue on the event loop and the store's database thread runs in batches.

A caller appends its item with a future; the first item starts a *drain* on the database
thread, which takes the waiting items itself, batch after batch, runs each batch with one call
and hands the batch's results back to the loop in one ``call_soon_threadsafe``.  Items queued
while a batch runs make the next batch without a trip through the event loop: a busy loop
(uvloop runs every ready callback under one hold of the GIL) gives the GIL up about once a
turn, so each hop through it, or each time the thread has to take the GIL back, costs the batch
about a turn.  A drain runs at most ``turns`` batches, then lets the calls queued behind it on
the thread run; the loop starts the next drain if items are still waiting.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import deque
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from bus.dbthread import DatabaseThread
from state.errors import StoreUnavailable

T = TypeVar("T")
R = TypeVar("R")


class BatchQueue(Generic[T, R]):
    """Items of type ``T`` run by ``run`` (a batch in, a result or exception per item out)."""

    def __init__(
        self, name: str, run: Callable[[list[T]], Sequence[R | BaseException]], *, batch: int
    ) -> None:
        self.name = name  # the store's, for errors
        self._run = run
        self._batch = batch
        self._waiting: deque[tuple[T, asyncio.Future[R]]] = deque()  # appended on the loop only
        self._draining: asyncio.Future[None] | None = None
        self._thread: DatabaseThread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def put(self, loop: asyncio.AbstractEventLoop, thread: DatabaseThread, item: T) -> R:
        """Queue ``item`` and wait for its own result."""
        future: asyncio.Future[R] = loop.create_future()
        self._waiting.append((item, future))
        if self._draining is None:
            self._start(loop, thread)
        return await future

    async def idle(self) -> None:
        """Wait until no drain runs (the items queued before the call are done)."""
        while self._draining is not None:
            await asyncio.shield(self._draining)
            await asyncio.sleep(0)  # the drain's done callback may have started another

    def _start(self, loop: asyncio.AbstractEventLoop, thread: DatabaseThread) -> None:
        self._loop, self._thread = loop, thread
        self._draining = thread.submit(self._drain, loop)
        self._draining.add_done_callback(self._drained)

    def _drained(self, draining: asyncio.Future[None]) -> None:
        """On the loop: the drain ended; start another for the items it did not take."""
        self._draining = None
        error = None if draining.cancelled() else draining.exception()
        if draining.cancelled() or error is not None:
            failure = StoreUnavailable(f"state store {self.name!r}: {error or 'closed'}")
            while self._waiting:
                _, future = self._waiting.popleft()
                if not future.done():
                    future.set_exception(failure)
        elif self._waiting and self._loop is not None and self._thread is not None:
            self._start(self._loop, self._thread)

    def _drain(self, loop: asyncio.AbstractEventLoop, turns: int = 8) -> None:
        """On the database thread: run what waits, a batch at a time, up to ``turns`` batches."""
        for _ in range(turns):
            waiting = self._waiting
            batch = [waiting.popleft() for _ in range(min(self._batch, len(waiting)))]
            if not batch:
                return
            results: Sequence[R | BaseException]
            try:
                results = self._run([item for item, _ in batch])
            except sqlite3.Error as exc:
                results = [StoreUnavailable(f"state store {self.name!r}: {exc}")] * len(batch)
            except Exception as exc:
                results = [exc] * len(batch)
            try:
                loop.call_soon_threadsafe(_settle, batch, results)
            except RuntimeError:  # the loop is closed: nobody waits any more
                return


def _settle(batch: list[tuple[T, asyncio.Future[R]]], results: Sequence[R | BaseException]) -> None:
    """Hand each item of a batch its own result."""
    for (_, future), result in zip(batch, results, strict=True):
        if future.done():
            continue  # the caller gave up; a write stands, as any in flight
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)
