"""The connection pool of state.postgresql: limits, waiting, dropping, closing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest

from state._postgres_pool import ConnectionPool
from state._postgres_schema import connect_arguments
from state.postgresql import PostgresSettings, PostgresStore
from state.store import SetRequest
from tests.helpers import POSTGRES, eventually


class _Conn:
    """What the pool asks of a connection, and a record of how it was let go."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.closed = False
        self.terminated = False
        self.in_transaction = False

    def is_closed(self) -> bool:
        return self.closed or self.terminated

    def is_in_transaction(self) -> bool:
        return self.in_transaction

    def terminate(self) -> None:
        self.terminated = True

    async def close(self) -> None:
        self.closed = True

    async def fetch(self, query: str, *args: Any) -> list[Any]:
        return [(self.number, query, args)]


class _Server:
    """Opens numbered connections; ``down`` makes the next connect fail."""

    def __init__(self) -> None:
        self.opened: list[_Conn] = []
        self.down = False

    async def connect(self) -> _Conn:
        await asyncio.sleep(0)
        if self.down:
            raise OSError("connection refused")
        self.opened.append(_Conn(len(self.opened)))
        return self.opened[-1]


async def test_connections_open_on_demand_up_to_the_size_and_are_reused_lifo() -> None:
    server = _Server()
    pool = ConnectionPool(server.connect, 2)
    # When: one caller after another
    for _ in range(3):
        assert (await pool.fetch("SELECT 1"))[0][0] == 0
    # Then: one connection did it all
    assert len(server.opened) == 1
    # When: three at once, with room for two
    async with pool.acquire() as a, pool.acquire() as b:
        third = asyncio.ensure_future(pool.fetch("SELECT 3"))
        await asyncio.sleep(0.01)
        assert not third.done()  # waits for a connection given back
        assert {a.number, b.number} == {0, 1}
    # Then: it got one of the two, and no third was opened
    assert (await third)[0][0] in (0, 1) and len(server.opened) == 2
    await pool.close()
    assert all(conn.closed for conn in server.opened)


async def test_broken_and_mid_transaction_connections_are_dropped_and_replaced() -> None:
    server = _Server()
    pool = ConnectionPool(server.connect, 1)
    async with pool.acquire() as conn:
        conn.in_transaction = True  # a caller cancelled inside a transaction
    assert server.opened[0].terminated
    async with pool.acquire() as conn:
        assert conn.number == 1
        conn.closed = True  # the server went away
    assert (await pool.fetch("SELECT 1"))[0][0] == 2
    await pool.close()


async def test_a_waiter_opens_its_own_when_a_dropped_connection_frees_a_place() -> None:
    server = _Server()
    pool = ConnectionPool(server.connect, 1)
    holder = await pool._take()
    waiting = asyncio.ensure_future(pool.fetch("SELECT 1"))
    await asyncio.sleep(0.01)
    holder.closed = True
    pool._give(holder)  # dropped: the waiter may open a new one
    assert (await waiting)[0][0] == 1
    await pool.close()


async def test_a_failed_connect_frees_its_place_and_raises() -> None:
    server = _Server()
    pool = ConnectionPool(server.connect, 1)
    server.down = True
    with pytest.raises(OSError, match="refused"):
        await pool.fetch("SELECT 1")
    server.down = False
    assert (await pool.fetch("SELECT 1"))[0][0] == 0
    await pool.close()


async def test_a_cancelled_waiter_passes_its_connection_on() -> None:
    server = _Server()
    pool = ConnectionPool(server.connect, 1)
    holder = await pool._take()
    first = asyncio.ensure_future(pool.fetch("first"))
    second = asyncio.ensure_future(pool.fetch("second"))
    await asyncio.sleep(0.01)
    pool._give(holder)  # handed to the first waiter, which is cancelled before it runs
    first.cancel()
    assert (await second)[0][1] == "second"
    with pytest.raises(asyncio.CancelledError):
        await first
    assert len(server.opened) == 1 and pool._busy == 0
    await pool.close()


async def test_close_waits_for_busy_connections_then_cuts_late_ones() -> None:
    server = _Server()
    pool = ConnectionPool(server.connect, 2)
    quick, slow = await pool._take(), await pool._take()
    pool._give(quick)
    closing = asyncio.ensure_future(pool.close(grace=0.05))
    await asyncio.sleep(0)
    with pytest.raises(asyncpg.InterfaceError, match="closed"):
        await pool.fetch("SELECT 1")  # no new callers
    await closing
    assert quick.closed and not slow.is_closed()
    pool._give(slow)  # came back after the grace
    assert slow.terminated


# -- against PostgreSQL ----------------------------------------------------------------------


@pytest.fixture
async def store(postgres_tables: PostgresSettings) -> AsyncIterator[PostgresStore]:
    async with PostgresStore("pooled", postgres_tables) as store:
        yield store


async def test_a_store_outlives_a_server_side_disconnect(store: PostgresStore, prefix: str) -> None:
    # Given: the store's connection, killed by the server
    await store.set(SetRequest(prefix + "k", b'"v"'))
    pid = await store.pool.fetchval("SELECT pg_backend_pid()")
    killer = await asyncpg.connect(**connect_arguments(POSTGRES))
    try:
        assert await killer.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await killer.close()
    idle = list(store.pool._idle)
    await eventually(lambda: all(conn.is_closed() for conn in idle), timeout=10)
    # When / Then: the next calls get a new connection
    item = await store.get(prefix + "k")
    assert item is not None and item.value == b'"v"'
    assert await store.pool.fetchval("SELECT pg_backend_pid()") != pid
