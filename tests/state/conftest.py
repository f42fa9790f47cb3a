"""The store matrix: every state test written once runs on each store listed here.

``store`` is a connected store of the kind under test; ``key`` makes keys unique to the test
(Redis and PostgreSQL are shared by the session, so nothing is flushed: keys and tables are
unique and removed afterwards).
"""

from __future__ import annotations

import importlib.util
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from state.memory import MemoryStore
from state.redis import RedisStore, RedisStoreSettings
from state.sqlite import SqliteSettings, SqliteStore
from state.store import StateStore
from tests.backends.redis import RedisServer

STORES = ("memory", "sqlite", "redis", "postgresql")
_PRESENT = [s for s in STORES if importlib.util.find_spec(f"state.{s}") is not None]
_MARKS = {"redis": [pytest.mark.redis]}


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
        keys = [k async for k in store.client.scan_iter(match=prefix.replace("|", "\\|") + "*")]
        if keys:
            await store.client.delete(*keys)


@pytest.fixture(params=[pytest.param(s, marks=_MARKS.get(s, []), id=s) for s in _PRESENT])
def store(request: pytest.FixtureRequest) -> StateStore:
    """The store under test; every conformance test runs once per store."""
    result: StateStore = request.getfixturevalue(f"store_{request.param}")
    return result
