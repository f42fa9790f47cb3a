"""state.postgresql against Dapr's v2 layout: same columns and migration records, Dapr rows read."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from state.postgresql import PostgresStore
from state.store import Journal, SetRequest
from tests.backends import missing_service
from tests.state.conftest import drop_postgres_tables, postgres_settings

DAPR_V2_COLUMNS = [
    ("key", "text", "NO"),
    ("value", "bytea", "NO"),
    ("etag", "uuid", "NO"),
    ("created_at", "timestamp with time zone", "NO"),
    ("updated_at", "timestamp with time zone", "YES"),
    ("expires_at", "timestamp with time zone", "YES"),
    ("row_id", "bigint", "NO"),
]


@pytest.fixture
async def store(postgres_reachable: bool) -> AsyncIterator[PostgresStore]:
    if not postgres_reachable:
        missing_service("PostgreSQL is not reachable on 127.0.0.1:5432")
    async with PostgresStore("statestore", postgres_settings(cleanup_interval=3600)) as store:
        try:
            yield store
        finally:
            await drop_postgres_tables(store)


async def test_tables_and_migration_level_match_dapr_v2(store: PostgresStore) -> None:
    s = store.settings
    columns = await store.pool.fetch(
        "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
        "WHERE table_name = $1 ORDER BY ordinal_position",
        s.state_table,
    )
    assert [tuple(row) for row in columns] == DAPR_V2_COLUMNS
    level = await store.pool.fetchval(
        f"SELECT value FROM {s.metadata_table} WHERE key = $1",
        f"migrations-state-v2-{s.table_prefix}",
    )
    assert level == "2"


async def test_the_outbox_tables_sit_beside_dapr_s(store: PostgresStore) -> None:
    table = store.settings.state_table
    etag = await store.set(SetRequest("a||k", b'"v"', journal=Journal("a", "k")))
    rows = await store.pool.fetch(
        f"SELECT store, operation, key, app_id, etag, value FROM {table}_outbox"
    )
    assert [tuple(row) for row in rows] == [("statestore", "upsert", "k", "a", etag, b'"v"')]
    await store.claim_changes("relay-1", lease=30, limit=10)
    holder = await store.pool.fetchval(f"SELECT relay FROM {table}_outbox_lease")
    assert holder == "relay-1"


async def test_a_row_dapr_wrote_reads_through(store: PostgresStore) -> None:
    etag = uuid.uuid4()
    await store.pool.execute(
        f"INSERT INTO {store.settings.state_table} (key, value, etag, expires_at) "
        "VALUES ($1, $2, $3, now() + interval '100 seconds')",
        "a||k",
        b'{"n":1}',
        etag,
    )
    item = await store.get("a||k")
    assert item is not None and item.value == b'{"n":1}' and item.etag == str(etag)
    assert item.expires_at is not None
    assert await store.set(SetRequest("a||k", b'{"n":2}', etag=str(etag)))


async def test_purge_deletes_expired_rows_once_per_interval(store: PostgresStore) -> None:
    table = store.settings.state_table
    await store.pool.execute(
        f"INSERT INTO {table} (key, value, expires_at) VALUES ('a||old', '\\x31', now() - "
        "interval '1 second')"
    )
    assert await store.purge_expired() is True
    assert await store.purge_expired() is False
    assert await store.pool.fetchval(f"SELECT count(*) FROM {table}") == 0


async def test_the_periodic_purge_removes_expired_rows(postgres_reachable: bool) -> None:
    if not postgres_reachable:
        missing_service("PostgreSQL is not reachable on 127.0.0.1:5432")
    async with PostgresStore("s", postgres_settings(cleanup_interval=0.2)) as store:
        try:
            table = store.settings.state_table
            await store.pool.execute(
                f"INSERT INTO {table} (key, value, expires_at) "
                "VALUES ('a||old', '\\x31', now() - interval '1 second')"
            )
            deadline = time.monotonic() + 5
            while await store.pool.fetchval(f"SELECT count(*) FROM {table}"):
                assert time.monotonic() < deadline, "expired row not purged"
                await asyncio.sleep(0.05)
        finally:
            await drop_postgres_tables(store)
