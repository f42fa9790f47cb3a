"""The tables of the SQLite bus file, opening it, taking its write lock, and its rows as messages.

The storage layout, with the lifetime of every row, is described in :mod:`bus.sqlite`.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bus.errors import ConfigError
from bus.message import STORED_MS, Message
from bus.rpc import MODE_KEY, RequestMode

_CALL = RequestMode.CALL.value

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    id TEXT NOT NULL,
    data BLOB NOT NULL,
    metadata BLOB,
    reply_to TEXT,
    correlation_id TEXT,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_topic ON messages (topic, seq);
CREATE TABLE IF NOT EXISTS groups (
    topic TEXT NOT NULL,
    grp TEXT NOT NULL,
    cursor INTEGER NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (topic, grp)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS deliveries (
    topic TEXT NOT NULL,
    grp TEXT NOT NULL,
    seq INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    consumer TEXT,
    due REAL NOT NULL,
    PRIMARY KEY (topic, grp, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (topic, grp, due);
CREATE TABLE IF NOT EXISTS inbox (
    seq INTEGER PRIMARY KEY,
    address TEXT NOT NULL,
    correlation_id TEXT,
    id TEXT NOT NULL,
    data BLOB NOT NULL,
    metadata BLOB,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS inbox_address ON inbox (address, seq);
CREATE TABLE IF NOT EXISTS presence (
    name TEXT NOT NULL,
    instance TEXT NOT NULL,
    address TEXT NOT NULL,
    started REAL NOT NULL,
    last_beat REAL NOT NULL,
    metadata BLOB,
    PRIMARY KEY (name, instance)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS doorbells (
    address TEXT PRIMARY KEY,
    port INTEGER NOT NULL,
    last_beat REAL NOT NULL
) WITHOUT ROWID;
"""


@dataclass(slots=True)
class SqliteDelivery:
    """A leased message and its ``seq``, the handle of ack, retry and release."""

    message: Message
    seq: int


def encode_metadata(metadata: Mapping[str, str]) -> bytes | None:
    """Metadata as stored: a JSON object, or NULL when empty."""
    return orjson.dumps(dict(metadata)) if metadata else None


def row_message(row: Sequence[Any], topic: str, attempt: int) -> Message:
    """A Message from ``(id, data, metadata, reply_to, correlation_id[, created])``.

    A call (request mode ``call``) read with its ``created`` time carries it as
    :data:`bus.message.STORED_MS`, so the server can tell how long the call waited in the file.
    """
    metadata = orjson.loads(row[2]) if row[2] else {}
    if len(row) > 5 and metadata.get(MODE_KEY) == _CALL:
        metadata[STORED_MS] = str(int(row[5] * 1000))
    return Message(
        id=row[0],
        data=row[1],
        metadata=metadata,
        topic=topic,
        attempt=attempt,
        reply_to=row[3],
        correlation_id=row[4],
    )


def connect(path: Path, busy_timeout: float) -> sqlite3.Connection:
    """Open (creating if needed) the bus file and its schema; the connection may change thread."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        _prepare(db, path, busy_timeout)
    except BaseException:
        db.close()
        raise
    return db


def _prepare(db: sqlite3.Connection, path: Path, busy_timeout: float) -> None:
    db.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    db.execute("PRAGMA auto_vacuum = INCREMENTAL")  # takes effect on a new file only
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute("PRAGMA journal_size_limit = 16777216")
    db.execute("BEGIN IMMEDIATE")
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise ConfigError(
                f"{path} holds bus schema {version}; this omnibus knows {SCHEMA_VERSION}"
            )
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.execute("COMMIT")
    finally:
        if db.in_transaction:
            db.execute("ROLLBACK")


LOCK_WAIT_FIRST = 0.00005  # seconds between the first attempts to take the write lock
LOCK_WAIT_MAX = 0.0005  # and at most between later ones
# The longest one attempt waits for the write lock on the database thread; the broker retries
# a busy call after that, so its other calls (acks, claims, beats) are not stuck behind it.
LOCK_SLICE = 0.05


def is_busy(exc: BaseException) -> bool:
    """True if ``exc`` is SQLite saying another connection holds the lock."""
    return isinstance(exc, sqlite3.OperationalError) and (
        getattr(exc, "sqlite_errorcode", 0) or 0
    ) & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def begin_immediate(db: sqlite3.Connection, busy_timeout: float, wait: float | None = None) -> None:
    """``BEGIN IMMEDIATE``, waiting up to ``wait`` (default ``busy_timeout``) for another
    writer to finish; the connection's ``busy_timeout`` is restored afterwards.

    SQLite's own busy handler sleeps 1, 2, 5, 10, 15, 20 ... ms between attempts, which turns a
    write lock held for a fraction of a millisecond (another process's commit) into a wait of
    several, even tens of milliseconds; this waits in steps of 50 to 500 us.  The busy handler
    stays on for the statements outside a transaction.
    """
    db.execute("PRAGMA busy_timeout = 0")  # fail at once: the waiting is done here
    try:
        deadline: float | None = None
        pause = LOCK_WAIT_FIRST
        while True:
            try:
                db.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
                    raise
                now = time.monotonic()
                if deadline is None:
                    deadline = now + (busy_timeout if wait is None else wait)
                elif now >= deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, LOCK_WAIT_MAX)
    finally:
        db.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
