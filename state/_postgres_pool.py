"""The connections of ``state.postgresql``: a small pool of asyncpg connections.

asyncpg's own ``Pool`` spent about 45 us of CPU and 70 us of wall time per statement on this
machine beyond the statement itself (``pool.fetch`` 70-78 us of CPU, ``connection.fetch`` 28 us:
a shielded task per release, timeouts around acquire and release, and by default a reset query,
one more round trip, after every statement).  A state get through the sidecar is one statement,
so that was more than the HTTP request around it.  This pool does what the store needs and no
more:

- at most ``size`` connections (``maxConns``), opened when a caller finds none idle, reused
  last-in first-out, so a light load keeps few of them busy;
- a caller past ``size`` waits in line for the next connection given back;
- a connection is given back as it is, without a reset query: the store leaves no session state
  behind (no ``SET``, ``LISTEN``, cursor outside a transaction or advisory lock, and its
  transactions end with their ``async with``); one that is closed, or still in a transaction
  (its caller was cancelled mid-way), is dropped and its place freed for a new one;
- :meth:`close` refuses new callers, closes the idle connections, waits up to ``grace`` seconds
  for the busy ones to come back, and terminates what is left.

Errors are asyncpg's and the socket's; the store turns them into ``StoreUnavailable``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg  # type: ignore[import-untyped]

Connect = Callable[[], Awaitable[Any]]  # opens one asyncpg connection


class ConnectionPool:
    """Up to ``size`` connections opened by ``connect``; see the module docstring."""

    def __init__(self, connect: Connect, size: int) -> None:
        if size < 1:
            raise ValueError("a pool needs room for one connection")
        self._connect = connect
        self._size = size
        self._idle: list[Any] = []
        self._count = 0  # connections open or being opened
        self._busy = 0
        self._waiting: deque[asyncio.Future[Any]] = deque()  # a connection, or None: open one
        self._closed = False
        self._closed_all = False  # close() is done: a connection given back now is cut
        self._all_back: asyncio.Event | None = None  # set by close() once nothing is busy

    async def open(self, count: int = 1) -> None:
        """Open ``count`` connections now (the first one checks that the server is there)."""
        opened = []
        try:
            for _ in range(min(count, self._size - self._count)):
                opened.append(await self._open_one())
        finally:
            for conn in opened:
                self._give(conn)

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[Any]:
        """A connection for the block (a transaction, several statements)."""
        conn = await self._take()
        try:
            yield conn
        finally:
            self._give(conn)

    async def execute(self, query: str, *args: Any) -> str:
        """``Connection.execute`` on a pooled connection: the status of the command."""
        async with self.acquire() as conn:
            return str(await conn.execute(query, *args))

    async def fetch(self, query: str, *args: Any) -> list[Any]:
        """``Connection.fetch`` on a pooled connection: the rows."""
        async with self.acquire() as conn:
            return list(await conn.fetch(query, *args))

    async def fetchval(self, query: str, *args: Any) -> Any:
        """``Connection.fetchval`` on a pooled connection: the first column of the first row."""
        async with self.acquire() as conn:
            return await conn.fetchval(query, *args)

    async def close(self, grace: float = 5.0) -> None:
        """Refuse new callers, close idle connections, then busy ones as they come back."""
        self._closed = True
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_exception(asyncpg.InterfaceError("the pool is closed"))
        if self._busy:
            self._all_back = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_back.wait(), grace)
        self._closed_all = True  # from here, a late one is cut when it comes back
        idle, self._idle = self._idle, []
        self._count -= len(idle)
        for conn in idle:
            await self._close_one(conn, grace)

    # -- taking and giving back ----------------------------------------------------------------

    async def _take(self) -> Any:
        while True:
            if self._closed:
                raise asyncpg.InterfaceError("the pool is closed")
            if self._idle:
                conn = self._idle.pop()
                if conn.is_closed():
                    self._count -= 1
                    continue
                self._busy += 1
                return conn
            if self._count < self._size:
                return await self._open_one()
            conn = await self._wait()
            if conn is not None:
                self._busy += 1
                return conn

    async def _open_one(self) -> Any:
        self._count += 1
        try:
            conn = await self._connect()
        except BaseException:
            self._count -= 1
            self._next_may_open()
            raise
        self._busy += 1
        return conn

    async def _wait(self) -> Any:
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                conn = waiter.result()  # handed over as the caller gave up: pass it on
                if conn is not None:
                    self._busy += 1
                    self._give(conn)
                else:
                    self._next_may_open()
            else:
                with contextlib.suppress(ValueError):
                    self._waiting.remove(waiter)
            raise

    def _give(self, conn: Any) -> None:
        self._busy -= 1
        if conn.is_closed() or conn.is_in_transaction() or self._closed_all:
            # broken, left mid-transaction by a cancelled caller, or back after close()
            if not conn.is_closed():
                conn.terminate()
            self._count -= 1
            self._next_may_open()
        else:
            while self._waiting:
                waiter = self._waiting.popleft()
                if not waiter.done():
                    waiter.set_result(conn)
                    return
            self._idle.append(conn)
        if self._busy == 0 and self._all_back is not None:
            self._all_back.set()

    def _next_may_open(self) -> None:
        """A place is free: the first waiter opens a connection of its own."""
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    @staticmethod
    async def _close_one(conn: Any, grace: float) -> None:
        try:
            await asyncio.wait_for(conn.close(), grace)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            conn.terminate()
