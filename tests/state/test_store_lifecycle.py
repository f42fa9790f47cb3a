"""Connecting, closing and failing: every store says StoreUnavailable, never a driver error."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from state.errors import StoreUnavailable
from state.postgresql import PostgresSettings, PostgresStore
from state.redis import RedisStore, RedisStoreSettings
from state.sqlite import SqliteSettings, SqliteStore
from state.store import DeleteRequest, SetRequest, StateStore
from tests.backends.redis import RedisServer, free_port, redis_available


async def test_connect_and_close_are_idempotent_and_keep_the_data(
    store: StateStore, key: Callable[[str], str]
) -> None:
    await store.connect()
    await store.set(SetRequest(key("k"), b"1"))
    await store.close()
    await store.close()
    await store.connect()  # the fixture closes it again at the end
    item = await store.get(key("k"))
    assert item is not None and item.value == b"1"


@pytest.mark.parametrize("kind", ["sqlite", "redis", "postgresql"])
async def test_a_store_used_before_connect_is_unavailable(kind: str, tmp_path: Path) -> None:
    stores: dict[str, StateStore] = {
        "sqlite": SqliteStore("s", SqliteSettings(str(tmp_path / "s.db"))),
        "redis": RedisStore("s", RedisStoreSettings()),
        "postgresql": PostgresStore("s", PostgresSettings("host=127.0.0.1")),
    }
    with pytest.raises(StoreUnavailable):
        await stores[kind].get("k")


async def test_unreachable_redis_is_unavailable() -> None:
    store = RedisStore("s", RedisStoreSettings(host="127.0.0.1", port=free_port(), max_retries=0))
    with pytest.raises(StoreUnavailable):
        await store.connect()


async def test_unreachable_postgresql_is_unavailable() -> None:
    settings = PostgresSettings(f"host=127.0.0.1 port={free_port()} user=x connect_timeout=2")
    with pytest.raises(StoreUnavailable):
        await PostgresStore("s", settings).connect()


async def test_an_unopenable_sqlite_file_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(StoreUnavailable):
        await SqliteStore("s", SqliteSettings(str(tmp_path / "dir.db"))).connect()


@pytest.mark.redis
async def test_redis_going_away_mid_use_is_unavailable(tmp_path: Path) -> None:
    if not redis_available():
        pytest.skip("redis-server is not installed")
    server = RedisServer(tmp_path)
    server.start()
    try:
        settings = RedisStoreSettings(host="127.0.0.1", port=server.port, max_retries=1)
        async with RedisStore("s", settings) as store:
            await store.set(SetRequest("k", b"1"))
            server.kill()
            with pytest.raises(StoreUnavailable):
                await store.get("k")
            with pytest.raises(StoreUnavailable):
                await store.set(SetRequest("k", b"2"))
            with pytest.raises(StoreUnavailable):  # its scan, on redis-py's client
                await store.query({}, "")
    finally:
        server.kill()


async def test_calls_in_flight_finish_when_a_store_closes(
    store: StateStore, key: Callable[[str], str]
) -> None:
    calls = [asyncio.ensure_future(store.set(SetRequest(key(str(i)), b"1"))) for i in range(20)]
    await asyncio.sleep(0)
    await store.close()
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(r, str | StoreUnavailable) for r in results), results


@pytest.mark.redis
async def test_a_burst_beyond_the_redis_pool_waits_instead_of_failing(
    redis_server: RedisServer,
) -> None:
    settings = RedisStoreSettings(host="127.0.0.1", port=redis_server.port, pool_size=2)
    prefix = f"burst-{uuid.uuid4().hex[:8]}"
    async with RedisStore("burst", settings) as store:
        etags = await asyncio.gather(
            *(store.set(SetRequest(key=f"{prefix}-{i}", value=b"1")) for i in range(50))
        )
        assert len(etags) == 50  # none failed with "Too many connections"
        await store.transact([DeleteRequest(key=f"{prefix}-{i}") for i in range(50)])
