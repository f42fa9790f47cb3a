"""Opening a ``state.sqlite`` database: connection string, pragmas, Dapr's migrations, purge.

Runs on the store's worker thread only (see :mod:`state.sqlite`).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, unquote, urlencode

# Told of the rows a purge deleted: the connection, their (key, etag) and the purge's time.
Expired = Callable[[sqlite3.Connection, list[tuple[str, str]], str], None]

if TYPE_CHECKING:
    from state.sqlite import SqliteSettings

# Dapr's modernc driver takes "_pragma"/"_txlock" options in the URI; sqlite3 has no use for them.
_DRIVER_OPTIONS = "_"


def timestamp(epoch: float | None = None) -> str:
    """UTC ``YYYY-MM-DD HH:MM:SS.fff``: sorts as text against Dapr's ``CURRENT_TIMESTAMP``."""
    moment = datetime.fromtimestamp(time.time() if epoch is None else epoch, UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def from_timestamp(value: object) -> datetime | None:
    """An aware UTC datetime from a TIMESTAMP column (ours or Dapr's), or None."""
    if value is None or value == "":
        return None
    moment = datetime.fromisoformat(str(value).replace("T", " ").removesuffix("Z"))
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _is_memory(connection_string: str) -> bool:
    lowered = connection_string.lower()
    return lowered.startswith(":memory:") or lowered.startswith("file::memory:")


def _uri(connection_string: str) -> tuple[str, Path | None, bool]:
    """A sqlite3 URI, the file's path (None in memory) and whether it is read-only."""
    if _is_memory(connection_string):
        return ":memory:" if connection_string.startswith(":") else connection_string, None, False
    if not connection_string.lower().startswith("file:"):
        path = Path(connection_string).expanduser().resolve()
        return path.as_uri(), path, False
    base, _, query = connection_string.partition("?")
    options = [(k, v) for k, v in parse_qsl(query) if not k.startswith(_DRIVER_OPTIONS)]
    read_only = ("mode", "ro") in options or ("immutable", "1") in options
    path = Path(unquote(base[len("file:") :]).removeprefix("//"))
    return base + ("?" + urlencode(options) if options else ""), path, read_only


class Database:
    """The open connection of one store and the statements that are not per-request."""

    def __init__(self, conn: sqlite3.Connection, settings: SqliteSettings) -> None:
        self.conn = conn
        self.settings = settings

    @classmethod
    def open(cls, settings: SqliteSettings) -> Database:
        """Connect, set the pragmas and bring the tables to Dapr's migration level 1."""
        uri, path, read_only = _uri(settings.connection_string)
        if path is not None and not read_only:
            path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            uri,
            uri=uri.startswith("file:"),
            isolation_level=None,
            check_same_thread=False,
            timeout=settings.busy_timeout,
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(settings.busy_timeout * 1000)}")
            if _is_memory(settings.connection_string):
                conn.execute("PRAGMA journal_mode = MEMORY")
            elif settings.disable_wal or read_only:
                conn.execute("PRAGMA journal_mode = DELETE")
            else:
                conn.execute("PRAGMA journal_mode = WAL")
            database = cls(conn, settings)
            if not read_only:
                database.migrate()
            return database
        except BaseException:
            conn.close()
            raise

    def migrate(self) -> None:
        """Dapr's migrations: the metadata table, then migration 1 (the state table); then
        omnibus's outbox tables (outside Dapr's migration levels, which Dapr ignores)."""
        meta, table = self.settings.metadata_table, self.settings.table
        self.conn.execute("BEGIN EXCLUSIVE TRANSACTION")
        try:
            self.conn.execute(
                f"CREATE TABLE IF NOT EXISTS {meta} "
                "(key text NOT NULL PRIMARY KEY, value text NOT NULL)"
            )
            row = self.conn.execute(f"SELECT value FROM {meta} WHERE key = 'migrations'").fetchone()
            if row is None or int(row[0]) < 1:
                self.conn.execute(
                    f"""CREATE TABLE IF NOT EXISTS {table} (
                        key TEXT NOT NULL PRIMARY KEY,
                        value TEXT NOT NULL,
                        is_binary BOOLEAN NOT NULL,
                        etag TEXT NOT NULL,
                        expiration_time TIMESTAMP DEFAULT NULL,
                        update_time TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
                    )"""
                )
                self.conn.execute(
                    f"REPLACE INTO {meta} (key, value) VALUES ('migrations', ?)", ("1",)
                )
            self._create_outbox()
        except BaseException:
            self.conn.execute("ROLLBACK TRANSACTION")
            raise
        self.conn.execute("COMMIT TRANSACTION")

    def _create_outbox(self) -> None:
        """The change feed's records and relay leases (:mod:`state._sqlite_outbox`)."""
        table = self.settings.table
        self.conn.execute(
            f"""CREATE TABLE IF NOT EXISTS {table}_outbox (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                store TEXT NOT NULL,
                event_id TEXT NOT NULL,
                operation TEXT NOT NULL,
                key TEXT NOT NULL,
                app_id TEXT NOT NULL,
                etag TEXT,
                value BLOB,
                time TIMESTAMP NOT NULL
            )"""
        )
        self.conn.execute(
            f"CREATE INDEX IF NOT EXISTS {table}_outbox_store_seq ON {table}_outbox (store, seq)"
        )
        self.conn.execute(
            f"CREATE TABLE IF NOT EXISTS {table}_outbox_lease "
            "(store TEXT NOT NULL PRIMARY KEY, relay TEXT NOT NULL, expires REAL NOT NULL)"
        )

    def purge(self, interval_ms: int, on_expired: Expired | None = None) -> bool:
        """Dapr's garbage collection: claim "last-cleanup" if it is older, then delete expired
        rows; ``on_expired`` gets their ``(key, etag)`` and the time, in the same transaction."""
        meta, table = self.settings.metadata_table, self.settings.table
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            claimed = self.conn.execute(
                f"INSERT INTO {meta} (key, value) VALUES ('last-cleanup', CURRENT_TIMESTAMP) "
                "ON CONFLICT (key) DO UPDATE SET value = CURRENT_TIMESTAMP "
                "WHERE (unixepoch(CURRENT_TIMESTAMP) - unixepoch(value)) * 1000 > ?",
                (interval_ms,),
            ).rowcount
            if claimed:
                now = timestamp()
                expired = self.conn.execute(
                    f"DELETE FROM {table} WHERE expiration_time IS NOT NULL "
                    "AND expiration_time < ? RETURNING key, etag",
                    (now,),
                ).fetchall()
                if on_expired is not None and expired:
                    on_expired(self.conn, expired, now)
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")
        return bool(claimed)

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()
