"""The per-request statements of ``state.sqlite``, run on the store's database thread.

Each write checks its etag or first-write condition in the same statement that writes it, so a
failed check has changed nothing and needs no savepoint; only a transaction, several statements,
runs under one of its own (:func:`apply`).  :func:`group_commit` runs the writes of a group
commit in one transaction and gives them its time, ``now`` (a
:func:`~state._sqlite_db.timestamp`): the rows a commit writes carry one ``update_time``.  A
write whose request carries a journal inserts its outbox record (:mod:`state._sqlite_outbox`)
right after, in that transaction.  ``store`` is the store's name, which the records carry.
Etags are version 4 UUIDs, as Dapr's.

A plain save (no etag, no first-write, no journal: it cannot fail a check) is queued as its
request, and the group commit gives each run of neighbouring plain saves one multi-row
``INSERT OR REPLACE``, in order (a key saved twice in a run keeps the later value, as two
statements would).  One statement instead of one per save matters beyond its own cost:
sqlite3 lets go of the GIL around every statement, and taking it back from a busy event loop
thread is a wait and a context switch each time.
"""

from __future__ import annotations

import base64
import functools
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from bus.message import new_uuid
from state import _sqlite_outbox as outbox
from state._common import expiry_epoch, given_etag, needs_absent
from state._sqlite_db import from_timestamp, timestamp
from state.errors import ETagMismatch, StateError
from state.store import DeleteRequest, Item, Operation, SetRequest

ALIVE = "(expiration_time IS NULL OR expiration_time > ?)"
_CHUNK = 500  # keys per IN (...) of a bulk get, well below SQLite's variable limit
_ALIVE_AT_6 = "(expiration_time IS NULL OR expiration_time > ?6)"  # ?6: now, in a write's row
_COLUMNS = "(key, value, is_binary, etag, expiration_time, update_time)"
_ROWS = 256  # rows per multi-row INSERT at most (6 variables each)

# A write of a group commit: a call given the connection and the commit's time, or a plain save.
Write = Callable[[sqlite3.Connection, str], Any] | SetRequest


def is_plain(request: SetRequest) -> bool:
    """A save that cannot fail a check and records nothing: it may share a statement."""
    return request.journal is None and given_etag(request) is None and not needs_absent(request)


def group_commit(conn: sqlite3.Connection, table: str, writes: Sequence[Write]) -> list[Any]:
    """Run ``writes`` in one transaction (one commit, one fsync), in order, with one time; a
    result each: the etag of a save, None, or the StateError of a failed check (which undid
    nothing else).  Any other error fails (and rolls back) the whole batch."""
    if len(writes) <= _ROWS and all(isinstance(w, SetRequest) for w in writes):
        # Only plain saves: one statement, its own transaction (the thread lets go of the GIL
        # once for the batch, not three times).
        return _run_writes(conn, timestamp(), table, writes)
    conn.execute("BEGIN IMMEDIATE")
    try:
        results = _run_writes(conn, timestamp(), table, writes)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return results


def _run_writes(
    conn: sqlite3.Connection, now: str, table: str, writes: Sequence[Write]
) -> list[Any]:
    results: list[Any] = []
    rows: list[tuple[Any, ...]] = []
    for one in writes:
        if isinstance(one, SetRequest):
            row = _row(one, now)
            rows.append(row)
            results.append(row[3])  # its etag
            continue
        if rows:
            _insert(conn, table, rows)
            rows = []
        try:
            results.append(one(conn, now))
        except StateError as exc:
            results.append(exc)
    if rows:
        _insert(conn, table, rows)
    return results


def _insert(conn: sqlite3.Connection, table: str, rows: list[tuple[Any, ...]]) -> None:
    for start in range(0, len(rows), _ROWS):
        chunk = rows[start : start + _ROWS]
        conn.execute(_insert_sql(table, len(chunk)), [v for row in chunk for v in row])


@functools.lru_cache(maxsize=64)
def _insert_sql(table: str, count: int) -> str:
    marks = ", ".join(["(?, ?, ?, ?, ?, ?)"] * count)
    return f"INSERT OR REPLACE INTO {table} {_COLUMNS} VALUES {marks}"


def read_many(conn: sqlite3.Connection, table: str, keys: Sequence[str]) -> dict[str, Item]:
    """The live rows of ``keys``, by key."""
    now, found = timestamp(), {}
    for start in range(0, len(keys), _CHUNK):
        chunk = list(keys[start : start + _CHUNK])
        marks = ",".join("?" * len(chunk))
        rows = conn.execute(
            f"SELECT key, value, is_binary, etag, expiration_time FROM {table} "
            f"WHERE key IN ({marks}) AND {ALIVE}",
            [*chunk, now],
        )
        for key, value, is_binary, etag, expires in rows:
            data = base64.b64decode(value) if is_binary else str(value).encode()
            found[key] = Item(key, data, etag, from_timestamp(expires))
    return found


def write(
    conn: sqlite3.Connection, now: str, *, table: str, store: str, request: SetRequest
) -> str:
    """Save one value; the new etag."""
    row = _row(request, now)
    etag = row[3]
    expected = given_etag(request)
    if expected is not None:
        sql = (
            f"UPDATE {table} SET value = ?2, is_binary = ?3, etag = ?4, expiration_time = ?5, "
            f"update_time = ?6 WHERE key = ?1 AND etag = ?7 AND {_ALIVE_AT_6}"
        )
        if conn.execute(sql, (*row, expected)).rowcount == 0:
            raise ETagMismatch(f"etag mismatch for key {request.key!r}")
    elif needs_absent(request):
        # Replace only a row that is absent or expired.
        sql = (
            f"INSERT OR REPLACE INTO {table} {_COLUMNS} SELECT ?1, ?2, ?3, ?4, ?5, ?6 "
            f"WHERE NOT EXISTS (SELECT 1 FROM {table} WHERE key = ?1 AND {_ALIVE_AT_6})"
        )
        if conn.execute(sql, row).rowcount == 0:
            raise ETagMismatch(f"first-write: key {request.key!r} already exists")
    else:
        conn.execute(f"INSERT OR REPLACE INTO {table} {_COLUMNS} VALUES (?, ?, ?, ?, ?, ?)", row)
    if request.journal is not None:
        journal, value = request.journal, request.value
        outbox.record(conn, table, store, journal, "upsert", now=now, etag=etag, value=value)
    return etag


def remove(
    conn: sqlite3.Connection, now: str, *, table: str, store: str, request: DeleteRequest
) -> None:
    """Delete one key; with an etag, only the live row carrying it."""
    expected = given_etag(request)
    if expected is None:
        conn.execute(f"DELETE FROM {table} WHERE key = ?", (request.key,))
    else:
        cursor = conn.execute(
            f"DELETE FROM {table} WHERE key = ? AND etag = ? AND {ALIVE}",
            (request.key, expected, now),
        )
        if cursor.rowcount == 0:
            raise ETagMismatch(f"etag mismatch for key {request.key!r}")
    if request.journal is not None:
        outbox.record(conn, table, store, request.journal, "delete", now=now)


def apply(
    conn: sqlite3.Connection, now: str, *, table: str, store: str, operations: Sequence[Operation]
) -> None:
    """Every operation in order, under a savepoint: the first failed check undoes them all."""
    conn.execute("SAVEPOINT transact")
    try:
        for operation in operations:
            if isinstance(operation, SetRequest):
                write(conn, now, table=table, store=store, request=operation)
            else:
                remove(conn, now, table=table, store=store, request=operation)
    except StateError:  # any other error fails the whole group commit
        conn.execute("ROLLBACK TO transact")
        conn.execute("RELEASE transact")
        raise
    conn.execute("RELEASE transact")


def _row(request: SetRequest, now: str) -> tuple[str, str, int, str, str | None, str]:
    """The row a save writes, in ``_COLUMNS`` order, with a new etag (its fourth value)."""
    stored, is_binary = _encode(request)
    return (request.key, stored, is_binary, new_uuid(), _expiry(request.ttl), now)


def _encode(request: SetRequest) -> tuple[str, int]:
    """The TEXT to store and its is_binary flag (Dapr: base64 of binary values)."""
    if not request.is_binary:
        try:
            return request.value.decode("utf-8"), 0
        except UnicodeDecodeError:
            pass  # not text after all: store it the binary way, which round-trips any bytes
    return base64.b64encode(request.value).decode("ascii"), 1


def _expiry(ttl: int | None) -> str | None:
    epoch = expiry_epoch(ttl)
    return None if epoch is None else timestamp(epoch)
