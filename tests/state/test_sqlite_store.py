"""state.sqlite against Dapr's state.sqlite layout: same tables, rows Dapr wrote read through."""

from __future__ import annotations

import asyncio
import base64
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from state import _sqlite_statements as sql
from state.errors import ETagMismatch, StoreUnavailable
from state.sqlite import SqliteSettings, SqliteStore
from state.store import Concurrency, Item, Journal, SetRequest

# PRAGMA table_info of Dapr's table: (name, type, notnull, default, pk)
DAPR_STATE_COLUMNS = [
    ("key", "TEXT", 1, None, 1),
    ("value", "TEXT", 1, None, 0),
    ("is_binary", "BOOLEAN", 1, None, 0),
    ("etag", "TEXT", 1, None, 0),
    ("expiration_time", "TIMESTAMP", 0, "NULL", 0),
    ("update_time", "TIMESTAMP", 1, "CURRENT_TIMESTAMP", 0),
]


def _columns(path: Path, table: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as conn:
        return [tuple(row[1:]) for row in conn.execute(f"PRAGMA table_info({table})")]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    settings = SqliteSettings(connection_string=str(tmp_path / "state.db"))
    async with SqliteStore("statestore", settings) as store:
        yield store


async def test_tables_match_dapr(store: SqliteStore, tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    assert _columns(path, "state") == DAPR_STATE_COLUMNS
    assert [c[0] for c in _columns(path, "metadata")] == ["key", "value"]
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT value FROM metadata WHERE key='migrations'").fetchone() == (
            "1",
        )
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


async def test_the_outbox_tables_sit_beside_dapr_s(store: SqliteStore, tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    columns = [c[0] for c in _columns(path, "state_outbox")]
    assert columns == "seq store event_id operation key app_id etag value time".split()
    assert [c[0] for c in _columns(path, "state_outbox_lease")] == ["store", "relay", "expires"]
    etag = await store.set(SetRequest("a||k", b'"v"', journal=Journal("a", "k")))
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT store, operation, key, app_id, etag, value FROM state_outbox")
        assert rows.fetchall() == [("statestore", "upsert", "k", "a", etag, b'"v"')]


async def test_rows_dapr_wrote_read_through(store: SqliteStore, tmp_path: Path) -> None:
    # Given rows written by Dapr's SQL: whole-second CURRENT_TIMESTAMP times, base64 binaries
    with sqlite3.connect(tmp_path / "state.db") as conn:
        conn.executemany(
            "INSERT INTO state (key, value, is_binary, etag, update_time, expiration_time) "
            "VALUES (?, ?, ?, ?, CURRENT_TIMESTAMP, "
            "CASE WHEN ? THEN DATETIME(CURRENT_TIMESTAMP, ?) END)",
            [
                ("a||json", '{"n":1}', 0, "etag-1", 0, None),
                ("a||bin", base64.b64encode(b"\x00\xff").decode(), 1, "etag-2", 1, "+100 seconds"),
                ("a||gone", '"x"', 0, "etag-3", 1, "-5 seconds"),
            ],
        )
    # Then each reads as Dapr would return it, and the expired one is absent
    found = await store.bulk_get(["a||json", "a||bin", "a||gone"])
    assert [(e.item.value, e.item.etag) if e.item else None for e in found] == [
        (b'{"n":1}', "etag-1"),
        (b"\x00\xff", "etag-2"),
        None,
    ]
    binary = found[1].item
    assert binary is not None and binary.expires_at is not None
    assert await store.set(SetRequest("a||json", b'{"n":2}', etag="etag-1"))


async def test_rows_we_write_are_what_dapr_writes(store: SqliteStore, tmp_path: Path) -> None:
    etag = await store.set(SetRequest("a||bin", b"\x01\x02", is_binary=True, ttl=60))
    await store.set(SetRequest("a||text", b'"t"'))
    with sqlite3.connect(tmp_path / "state.db") as conn:
        rows = conn.execute(
            "SELECT key, value, is_binary, etag, expiration_time > CURRENT_TIMESTAMP "
            "FROM state ORDER BY key"
        ).fetchall()
    assert rows == [("a||bin", "AQI=", 1, etag, 1), ("a||text", '"t"', 0, rows[1][3], None)]
    assert len(etag) == 36  # a uuid, as Dapr's


async def test_purge_deletes_expired_rows_once_per_interval(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    settings = SqliteSettings(connection_string=str(path), cleanup_interval=3600)
    async with SqliteStore("s", settings) as store:
        with sqlite3.connect(path) as conn:
            conn.execute(
                "INSERT INTO state (key, value, is_binary, etag, expiration_time) "
                "VALUES ('k', '1', 0, 'e', DATETIME(CURRENT_TIMESTAMP, '-1 seconds'))"
            )
        assert await store.purge_expired() is True
        assert await store.purge_expired() is False  # another purge ran within the interval
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM state").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM metadata WHERE key='last-cleanup'").fetchone()


async def test_custom_table_names_and_a_second_store_on_the_same_file(tmp_path: Path) -> None:
    settings = SqliteSettings(
        connection_string=f"file:{tmp_path / 'x.db'}?_txlock=immediate",
        table="mystate",
        metadata_table="mymeta",
        disable_wal=True,
    )
    async with SqliteStore("one", settings) as one, SqliteStore("two", settings) as two:
        etag = await one.set(SetRequest("k", b"1"))
        item = await two.get("k")
        assert item is not None and item.etag == etag
    assert _columns(tmp_path / "x.db", "mystate") == DAPR_STATE_COLUMNS
    assert _columns(tmp_path / "x.db", "mymeta")


@pytest.mark.parametrize("spelling", ["path", "uri"])
async def test_a_new_directory_with_spaces_is_created(tmp_path: Path, spelling: str) -> None:
    path = tmp_path / "new dir" / "state db.sqlite"
    connection = str(path) if spelling == "path" else f"file:{path}"
    async with SqliteStore("s", SqliteSettings(connection_string=connection)) as store:
        await store.set(SetRequest("k", b"1"))
    assert path.exists()
    async with SqliteStore("s", SqliteSettings(connection_string=connection)) as store:
        item = await store.get("k")
        assert item is not None and item.value == b"1"


async def test_an_in_memory_database_works() -> None:
    async with SqliteStore("s", SqliteSettings(connection_string=":memory:")) as store:
        await store.set(SetRequest("k", b"1"))
        assert await store.get("k") is not None


async def test_the_periodic_purge_removes_expired_rows(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    settings = SqliteSettings(connection_string=str(path), cleanup_interval=0.2)
    async with SqliteStore("s", settings):
        with sqlite3.connect(path) as conn:
            conn.execute(
                "INSERT INTO state (key, value, is_binary, etag, expiration_time) "
                "VALUES ('k', '1', 0, 'e', DATETIME(CURRENT_TIMESTAMP, '-1 seconds'))"
            )
        deadline = time.monotonic() + 5
        while _count(path) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert _count(path) == 0


def _count(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT count(*) FROM state").fetchone()[0])


# -- the group commit -------------------------------------------------------------------------


async def test_a_group_commit_keeps_each_writes_order_and_outcome(store: SqliteStore) -> None:
    """Plain saves share one statement, checked ones run alone: the order and every outcome are
    those of the writes one after another."""
    stale = SetRequest("x", b"1", etag="not-the-etag")
    first = SetRequest("y", b"2", concurrency=Concurrency.FIRST_WRITE)
    writes = [
        SetRequest("k", b"1"),
        SetRequest("k", b"2"),
        stale,
        SetRequest("y", b"1"),
        first,  # y exists by now
        SetRequest("k", b"3"),
    ]
    results = await asyncio.gather(*(store.set(w) for w in writes), return_exceptions=True)
    assert [type(r) for r in results] == [str, str, ETagMismatch, str, ETagMismatch, str]
    assert len(set(results[:2] + results[3:4] + results[5:])) == 4  # a fresh etag each
    k, y = await store.get("k"), await store.get("y")
    assert k is not None and k.value == b"3" and k.etag == results[5]
    assert y is not None and y.value == b"1"
    assert await store.get("x") is None


async def test_writes_that_wait_behind_a_commit_share_the_next(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes: list[int] = []
    commit = sql.group_commit

    def counted(conn: sqlite3.Connection, table: str, writes: list[sql.Write]) -> list[object]:
        sizes.append(len(writes))
        return commit(conn, table, writes)

    monkeypatch.setattr(sql, "group_commit", counted)
    held = threading.Event()
    busy = store._thread.submit(held.wait) if store._thread is not None else None  # the thread
    saves = [asyncio.ensure_future(store.set(SetRequest(f"k{n}", b"1"))) for n in range(50)]
    await asyncio.sleep(0.05)
    held.set()
    await asyncio.gather(*saves)
    assert busy is not None and await busy
    assert sizes == [50]


async def test_a_failed_commit_fails_its_batch_and_the_store_goes_on(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    commit = sql.group_commit
    calls = 0

    def failing_once(conn: sqlite3.Connection, table: str, writes: list[sql.Write]) -> list[object]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise sqlite3.OperationalError("disk I/O error")
        return commit(conn, table, writes)

    monkeypatch.setattr(sql, "group_commit", failing_once)
    with pytest.raises(StoreUnavailable, match="disk I/O error"):
        await store.set(SetRequest("k", b"1"))
    await store.set(SetRequest("k", b"2"))
    item = await store.get("k")
    assert item is not None and item.value == b"2"


async def test_reads_that_wait_behind_the_thread_share_one_select(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.set(SetRequest("k3", b"3"))
    selects: list[list[str]] = []
    read_many = sql.read_many

    def counted(conn: sqlite3.Connection, table: str, keys: list[str]) -> dict[str, Item]:
        selects.append(list(keys))
        return read_many(conn, table, keys)

    monkeypatch.setattr(sql, "read_many", counted)
    held = threading.Event()
    busy = store._thread.submit(held.wait) if store._thread is not None else None
    gets = [asyncio.ensure_future(store.get(f"k{n % 5}")) for n in range(20)]
    await asyncio.sleep(0.05)
    held.set()
    found = await asyncio.gather(*gets)
    assert busy is not None and await busy
    assert selects == [["k0", "k1", "k2", "k3", "k4"]]  # each key once
    assert [item is not None and item.value for item in found[:5]] == [
        False,
        False,
        False,
        b"3",
        False,
    ]
