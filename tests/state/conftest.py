"""The store matrix: every state test written once runs on each store listed here.

``store`` is a connected store of the kind under test, named ``store_name`` (unique to the test,
so outbox records and relay leases of one test never meet another's); ``key`` makes keys unique
to the test (Redis and PostgreSQL are shared by the session, so nothing is flushed: keys, names
and tables are unique and removed afterwards).  ``reopen()`` opens one more store object on the
same backend, as a restarted or second sidecar would (for ``state.in-memory``, whose data lives
in the object, it is the same object).
"""

from __future__ import annotations

import asyncio
import importlib.util
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from state._postgres_schema import drop_tables
from state.memory import MemoryStore
from state.postgresql import PostgresSettings, PostgresStore
from state.redis import RedisStore, RedisStoreSettings
from state.sqlite import SqliteSettings, SqliteStore
from state.store import StateStore
from tests.backends import missing_service
from tests.backends.redis import RedisServer
from tests.helpers import POSTGRES, postgres_listens

STORES = ("memory", "sqlite", "redis", "postgresql")
_PRESENT = [s for s in STORES if importlib.util.find_spec(f"state.{s}") is not None]
_MARKS = {"redis": [pytest.mark.redis]}


@pytest.fixture(scope="session")
def postgres_reachable() -> bool:
    """Whether PostgreSQL listens on 127.0.0.1:5432 (checked once per session)."""
    return postgres_listens()


@pytest.fixture
def prefix() -> str:
    """A key prefix no other test uses, shaped like Dapr's ``<app-id>||``."""
    return f"app-{uuid.uuid4().hex[:10]}||"


@pytest.fixture
def key(prefix: str) -> Callable[[str], str]:
    """``key("a")`` -> a storage key unique to this test."""
    return lambda name: prefix + name


@pytest.fixture
def store_name() -> str:
    """The name of the test's store (outbox records and leases are kept per name)."""
    return f"statestore-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def open_memory(store_name: str) -> Callable[[], StateStore]:
    shared = MemoryStore(store_name)  # one dict per process: reopening finds the same one
    return lambda: shared


@pytest.fixture
def open_sqlite(tmp_path: Path, store_name: str) -> Callable[[], StateStore]:
    settings = SqliteSettings(connection_string=str(tmp_path / "state.db"))
    return lambda: SqliteStore(store_name, settings)


@pytest.fixture
def open_redis(redis_server: RedisServer, store_name: str) -> Callable[[], StateStore]:
    settings = RedisStoreSettings(host="127.0.0.1", port=redis_server.port)
    return lambda: RedisStore(store_name, settings)


@pytest.fixture
def open_postgresql(postgres_tables: PostgresSettings, store_name: str) -> Callable[[], StateStore]:
    return lambda: PostgresStore(store_name, postgres_tables)


@pytest.fixture
async def store_memory(open_memory: Callable[[], StateStore]) -> AsyncIterator[StateStore]:
    async with open_memory() as store:
        yield store


@pytest.fixture
async def store_sqlite(open_sqlite: Callable[[], StateStore]) -> AsyncIterator[StateStore]:
    async with open_sqlite() as store:
        yield store


@pytest.fixture
async def store_redis(
    open_redis: Callable[[], StateStore], prefix: str, store_name: str
) -> AsyncIterator[StateStore]:
    """A store on the session's private redis-server; the test's keys are deleted afterwards."""
    async with open_redis() as store:
        assert isinstance(store, RedisStore)
        yield store
        await store.connect()  # a test may have closed it
        keys = [k async for k in store.client.scan_iter(match=prefix.replace("|", "\\|") + "*")]
        keys += [f"omnibus:outbox:{store_name}", f"omnibus:outbox-relay:{store_name}"]
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
        await drop_tables(conn, store.settings.state_table, store.settings.metadata_table)


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
async def store_postgresql(
    open_postgresql: Callable[[], StateStore], store_name: str
) -> AsyncIterator[StateStore]:
    """A store on this run's tables; its outbox rows are deleted afterwards."""
    async with open_postgresql() as store:
        assert isinstance(store, PostgresStore)
        yield store
        await store.connect()  # a test may have closed it
        table = store.settings.state_table
        for suffix in ("_outbox", "_outbox_lease"):
            await store.pool.execute(f"DELETE FROM {table}{suffix} WHERE store = $1", store_name)


@pytest.fixture(params=[pytest.param(s, marks=_MARKS.get(s, []), id=s) for s in _PRESENT])
def store_kind(request: pytest.FixtureRequest) -> str:
    """The kind of store under test; every conformance test runs once per kind."""
    kind: str = request.param
    return kind


@pytest.fixture
def store(request: pytest.FixtureRequest, store_kind: str) -> StateStore:
    """The store under test, connected."""
    result: StateStore = request.getfixturevalue(f"store_{store_kind}")
    return result


@pytest.fixture
async def reopen(
    request: pytest.FixtureRequest, store: StateStore, store_kind: str
) -> AsyncIterator[Callable[[], Awaitable[StateStore]]]:
    """``await reopen()``: one more connected store of the test's name on the same backend."""
    make: Callable[[], StateStore] = request.getfixturevalue(f"open_{store_kind}")
    opened: list[StateStore] = []

    async def reopen() -> StateStore:
        other = make()
        await other.connect()
        opened.append(other)
        return other

    yield reopen
    for other in opened:
        await other.close()
