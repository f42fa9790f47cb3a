"""The store matrix: every state test written once runs on each store listed here.

``store`` is a connected store of the kind under test; ``key`` makes keys unique to the test
(Redis and PostgreSQL are shared by the session, so nothing is flushed: keys and tables are
unique and removed afterwards).
"""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from state.memory import MemoryStore
from state.postgresql import PostgresSettings, PostgresStore
from state.redis import RedisStore, RedisStoreSettings
from state.sqlite import SqliteSettings, SqliteStore
from state.store import StateStore
from tests.backends import missing_service
from tests.backends.redis import RedisServer

POSTGRES = "host=127.0.0.1 port=5432 user=postgres dbname=test"

STORES = ("memory", "sqlite", "redis", "postgresql")
_PRESENT = [s for s in STORES if importlib.util.find_spec(f"state.{s}") is not None]
_MARKS = {"redis": [pytest.mark.redis]}


@pytest.fixture(scope="session")
def postgres_reachable() -> bool:
    """Whether PostgreSQL listens on 127.0.0.1:5432 (checked once per session)."""
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture
def prefix() -> str:
    """A key prefix no other test uses, shaped like Dapr's ``<app-id>||``."""
    return f"app-{uuid.uuid4().hex[:10]}||"


@pytest.fixture
def key(prefix: str) -> Callable[[str], str]:
    """``key("a")`` -> a storage key unique to this test."""
    return lambda name: prefix + name


@pytest.fixture
async def store_memory() -> AsyncIterator[StateStore]:
    async with MemoryStore("statestore") as store:
        yield store


@pytest.fixture
async def store_sqlite(tmp_path: Path) -> AsyncIterator[StateStore]:
    settings = SqliteSettings(connection_string=str(tmp_path / "state.db"))
    async with SqliteStore("statestore", settings) as store:
        yield store


@pytest.fixture
async def store_redis(redis_server: RedisServer, prefix: str) -> AsyncIterator[StateStore]:
    """A store on the session's private redis-server; the test's keys are deleted afterwards."""
    settings = RedisStoreSettings(host="127.0.0.1", port=redis_server.port)
    async with RedisStore("statestore", settings) as store:
        yield store
        await store.connect()  # a test may have closed it
        keys = [k async for k in store.client.scan_iter(match=prefix.replace("|", "\\|") + "*")]
        if keys:
            await store.client.delete(*keys)


def postgres_settings(**overrides: object) -> PostgresSettings:
    """Settings for tables of their own (``omnibus_<random>_state``) in the test database."""
    unique = f"omnibus_{uuid.uuid4().hex[:10]}_"
    fields: dict[str, object] = {
        "connection_string": POSTGRES,
        "table_prefix": unique,
        "metadata_table": f"{unique}metadata",
        "cleanup_interval": 0,
    }
    fields.update(overrides)
    return PostgresSettings(**fields)  # type: ignore[arg-type]


async def drop_postgres_tables(store: PostgresStore) -> None:
    """Remove what a test store created."""
    async with store.pool.acquire() as conn:
        await conn.execute(f"DROP TABLE IF EXISTS {store.settings.state_table}")
        await conn.execute(f"DROP TABLE IF EXISTS {store.settings.metadata_table}")
        await conn.execute(f"DROP FUNCTION IF EXISTS {store.settings.state_table}_jsonb(bytea)")


@pytest.fixture(scope="session")
def postgres_tables(postgres_reachable: bool) -> Iterator[PostgresSettings]:
    """Tables unique to this test run, shared by its tests (keys are unique per test), dropped at
    the end of the session."""
    if not postgres_reachable:
        missing_service("PostgreSQL is not reachable on 127.0.0.1:5432")
    settings = postgres_settings()
    yield settings

    async def drop() -> None:
        store = PostgresStore("cleanup", settings)
        async with store:
            await drop_postgres_tables(store)

    asyncio.run(drop())


@pytest.fixture
async def store_postgresql(postgres_tables: PostgresSettings) -> AsyncIterator[StateStore]:
    """A store on this run's tables."""
    async with PostgresStore("statestore", postgres_tables) as store:
        yield store


@pytest.fixture(params=[pytest.param(s, marks=_MARKS.get(s, []), id=s) for s in _PRESENT])
def store(request: pytest.FixtureRequest) -> StateStore:
    """The store under test; every conformance test runs once per store."""
    result: StateStore = request.getfixturevalue(f"store_{request.param}")
    return result
