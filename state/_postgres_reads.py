"""Reads of ``state.postgresql`` that wait together share one SELECT.

A get is one short statement; its round trip, asyncpg's work and the server's cost more than
the rows.  So the reads a loop pass brings are sent as one ``SELECT ... WHERE key = ANY($1)``
of all their keys, at most :data:`IN_FLIGHT` such statements at a time; reads that come while
they are all out wait for the next one, which therefore carries more.  Under a light load a
read goes out at the end of the loop pass it came in, alone.

One caller's read never changes another's outcome: if a shared statement fails, each of its
reads is run again on its own, so each caller gets its own rows or its own error.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

IN_FLIGHT = 2  # shared SELECTs out at once (the server's cores, not the pool's size, bound it)
MAX_KEYS = 256  # keys one shared SELECT carries at most

Fetch = Callable[[list[str]], Awaitable[dict[str, Any]]]  # keys -> the rows found, by key


class SharedReads:
    """Gathers reads into shared fetches of their keys; ``fetch`` runs one."""

    def __init__(self, fetch: Fetch) -> None:
        self._fetch = fetch
        self._waiting: deque[tuple[Sequence[str], asyncio.Future[dict[str, Any]]]] = deque()
        self._scheduled = False
        self._out = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def read(self, keys: Sequence[str]) -> dict[str, Any]:
        """The rows of ``keys`` found, by key (fetched with the reads waiting beside it)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._waiting.append((keys, future))
        if not self._scheduled and self._out < IN_FLIGHT:
            self._scheduled = True
            loop.call_soon(self._send)
        return await future

    def _send(self) -> None:
        """After the loop pass: one fetch of what waits (as much as one may carry)."""
        self._scheduled = False
        if not self._waiting or self._out >= IN_FLIGHT:
            return
        batch: list[tuple[Sequence[str], asyncio.Future[dict[str, Any]]]] = []
        count = 0
        while self._waiting and (not batch or count + len(self._waiting[0][0]) <= MAX_KEYS):
            keys, future = self._waiting.popleft()
            batch.append((keys, future))
            count += len(keys)
        self._out += 1
        task = asyncio.ensure_future(self._run(batch))
        self._tasks.add(task)
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._out -= 1
        if self._waiting and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._send)

    async def _run(self, batch: list[tuple[Sequence[str], asyncio.Future[dict[str, Any]]]]) -> None:
        live = [(keys, future) for keys, future in batch if not future.done()]
        if not live:
            return
        wanted = list(dict.fromkeys(key for keys, _ in live for key in keys))
        try:
            found = await self._fetch(wanted)
        except Exception as exc:
            if len(live) == 1:
                _fail(live[0][1], exc)
                return
            await asyncio.gather(*(self._alone(keys, future) for keys, future in live))
            return
        for _, future in live:
            if not future.done():
                future.set_result(found)

    async def _alone(self, keys: Sequence[str], future: asyncio.Future[dict[str, Any]]) -> None:
        """A read of a failed shared fetch, run again by itself."""
        try:
            found = await self._fetch(list(keys))
        except Exception as exc:
            _fail(future, exc)
        else:
            if not future.done():
                future.set_result(found)


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
