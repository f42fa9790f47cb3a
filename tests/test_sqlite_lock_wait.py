"""The SQLite store waits for another writer's lock in short steps, up to the busy time-out."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from bus.message import Message
from bus.sqlite import SqliteBroker, SqliteSettings
from bus.sqlite._store import SqliteStore


def _holder(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("BEGIN IMMEDIATE")
    return db


def test_transaction_waits_for_a_short_lock(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "bus.db", busy_timeout=5.0)
    store.open()
    holder = _holder(tmp_path / "bus.db")
    timer = threading.Timer(0.03, lambda: holder.execute("COMMIT"))
    timer.start()
    started = time.monotonic()
    with store.transaction() as db:
        db.execute("INSERT INTO doorbells (address, port, last_beat) VALUES ('a', 1, 0)")
    waited = time.monotonic() - started
    timer.join()
    assert 0.02 <= waited < 1.0
    assert store.db.execute("SELECT COUNT(*) FROM doorbells").fetchone()[0] == 1
    # The connection's own busy time-out is back for the statements outside a transaction.
    assert store.db.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
    holder.close()
    store.close(None)


def test_transaction_gives_up_after_the_busy_timeout(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "bus.db", busy_timeout=0.05)
    store.open()
    holder = _holder(tmp_path / "bus.db")
    started = time.monotonic()
    with pytest.raises(sqlite3.OperationalError, match="locked"), store.transaction():
        pass
    assert 0.04 <= time.monotonic() - started < 1.0
    assert not store.db.in_transaction
    assert store.db.execute("PRAGMA busy_timeout").fetchone()[0] == 50
    holder.execute("ROLLBACK")
    holder.close()
    with store.transaction() as db:  # the lock is free again
        db.execute("DELETE FROM doorbells")
    store.close(None)


async def test_a_publish_outwaits_a_lock_held_longer_than_the_busy_timeout(
    tmp_path: Path,
) -> None:
    # Given another process that holds the write lock for longer than busyTimeout
    settings = SqliteSettings(path=tmp_path / "bus.db", busy_timeout=0.2)
    async with SqliteBroker(settings) as broker:
        holder = _holder(tmp_path / "bus.db")
        try:
            # When a publish comes in meanwhile
            publishing = asyncio.create_task(broker.publish("t", [Message(data=b"x")]))
            await asyncio.sleep(0.5)  # the lock is held: that wait is what is under test
            assert not publishing.done()
            # Then the database thread is free for other calls while the publish waits
            started = time.monotonic()
            await broker.call(broker.store.data_version)
            assert time.monotonic() - started < 0.2
        finally:
            holder.execute("COMMIT")
            holder.close()
        # And the publish succeeds once the lock is free: contention alone never fails it
        await asyncio.wait_for(publishing, 5)
        assert await broker.retained("t") == 1
