"""The outbox of ``state.sqlite`` (the change feed's records), run on the store's worker thread.

Two tables beside the state table, named after it (layout in :mod:`state.sqlite`) and created
with it (:meth:`state._sqlite_db.Database.migrate`): ``<table>_outbox`` holds the records,
``<table>_outbox_lease`` the relay lease of each store name.  Records are inserted by the write
they describe, inside its savepoint, so a write that fails or rolls back leaves none; ``seq`` is
AUTOINCREMENT so that a number is never given twice and a late delete by number can only remove
the record it published.  Every function here runs inside the group commit's ``BEGIN IMMEDIATE``
(:func:`state._sqlite_statements.group_commit`), so the lease's read-then-write is atomic across
every process sharing the file.

:func:`record_expired` is what the purge of a store with a change feed adds
(:meth:`~state._sqlite_db.Database.purge`: Dapr's claim of "last-cleanup", then ``DELETE ...
RETURNING`` of the rows expired at that moment): an ``expire`` record for each, in the purge's
``BEGIN IMMEDIATE``.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from typing import Literal

from state._sqlite_db import from_timestamp
from state.feed import expiry_journal
from state.store import Journal, RecordedChange

_CHUNK = 500  # numbers per IN (...), well below SQLite's variable limit


def record(
    conn: sqlite3.Connection,
    table: str,
    store: str,
    journal: Journal,
    operation: Literal["upsert", "delete", "expire"],
    *,
    now: str,
    etag: str | None = None,
    value: bytes | None = None,
) -> None:
    """Insert the record of one write, made at ``now`` (a :func:`~state._sqlite_db.timestamp`)."""
    conn.execute(
        f"INSERT INTO {table}_outbox "
        "(store, event_id, operation, key, app_id, etag, value, time) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (store, journal.event_id, operation, journal.key, journal.app_id, etag, value, now),
    )


def record_expired(
    conn: sqlite3.Connection,
    expired: Sequence[tuple[str, str]],
    now: str,
    *,
    table: str,
    store: str,
) -> None:
    """An ``expire`` record for each row a purge deleted, in the purge's transaction."""
    for key, etag in expired:
        record(conn, table, store, expiry_journal(key), "expire", now=now, etag=etag)


def claim(
    conn: sqlite3.Connection, table: str, store: str, relay: str, lease: float, limit: int
) -> list[RecordedChange] | None:
    """The oldest records of ``store`` if ``relay`` holds (or takes) its lease, else None.

    A lease with more than half its time left is not written again: most passes only read.
    """
    now = time.time()
    row = conn.execute(
        f"SELECT relay, expires FROM {table}_outbox_lease WHERE store = ?", (store,)
    ).fetchone()
    if row is not None and row[0] != relay and row[1] > now:
        return None
    if row is None or row[0] != relay or row[1] - now < lease / 2:
        conn.execute(
            f"INSERT INTO {table}_outbox_lease (store, relay, expires) VALUES (?, ?, ?) "
            "ON CONFLICT (store) DO UPDATE SET relay = excluded.relay, expires = excluded.expires",
            (store, relay, now + lease),
        )
    rows = conn.execute(
        f"SELECT seq, event_id, operation, key, app_id, etag, value, time FROM {table}_outbox "
        "WHERE store = ? ORDER BY seq LIMIT ?",
        (store, limit),
    )
    return [_change(*row) for row in rows]


def forget(conn: sqlite3.Connection, table: str, positions: Sequence[str]) -> None:
    """Delete the records numbered ``positions``."""
    for start in range(0, len(positions), _CHUNK):
        chunk = [int(p) for p in positions[start : start + _CHUNK]]
        marks = ",".join("?" * len(chunk))
        conn.execute(f"DELETE FROM {table}_outbox WHERE seq IN ({marks})", chunk)


def release(conn: sqlite3.Connection, table: str, store: str, relay: str) -> None:
    """Delete the lease of ``store`` if ``relay`` holds it."""
    conn.execute(f"DELETE FROM {table}_outbox_lease WHERE store = ? AND relay = ?", (store, relay))


def _change(
    seq: int,
    event_id: str,
    operation: Literal["upsert", "delete"],
    key: str,
    app_id: str,
    etag: str | None,
    value: bytes | None,
    moment: str,
) -> RecordedChange:
    at = from_timestamp(moment)
    assert at is not None  # NOT NULL column
    value = None if value is None else bytes(value)
    return RecordedChange(str(seq), event_id, operation, key, app_id, etag, value, at)
