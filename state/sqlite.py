"""``state.sqlite``: the embedded default store, in Dapr's state.sqlite table layout.

Storage layout (the same file means the same to Dapr and to omnibus)::

    CREATE TABLE <tableName, default state> (
        key TEXT NOT NULL PRIMARY KEY,        -- the prefixed key, e.g. "myapp||order-1"
        value TEXT NOT NULL,                  -- JSON text, or base64 of the bytes when is_binary
        is_binary BOOLEAN NOT NULL,           -- 1 for values that are not JSON/text
        etag TEXT NOT NULL,                   -- a uuid4, new on every write
        expiration_time TIMESTAMP DEFAULT NULL,   -- UTC "YYYY-MM-DD HH:MM:SS[.fff]"; NULL: never
        update_time TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)
    CREATE TABLE <metadataTableName, default metadata> (key TEXT PRIMARY KEY, value TEXT)
        -- "migrations" = "1" (Dapr's migration level), "last-cleanup" = time of the last purge

Rows past their expiration_time are invisible at once and deleted by a purge every
``cleanupInterval`` (default 1 h; 0 disables), which, as in Dapr, runs only if no process sharing
the file purged within the interval.  Times carry milliseconds (Dapr writes whole seconds; both
compare correctly as text).  All sqlite3 calls of a store run on one worker thread of its own;
writes of a transaction run inside ``BEGIN IMMEDIATE``.

Beyond Dapr: the purge is on by default (Dapr's default interval is 0, off), and the query API
(:mod:`state._sqlite_query`) runs over SQLite's JSON functions.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import sqlite3
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from state._common import expiry_epoch, given_etag, needs_absent
from state._sqlite_db import Database, from_timestamp, timestamp
from state._sqlite_query import select_sql
from state.errors import BulkError, ETagMismatch, StateError, StoreUnavailable
from state.query import page_token, parse_query
from state.store import (
    BulkItem,
    DeleteRequest,
    Feature,
    Item,
    Operation,
    QueryResult,
    SetRequest,
    StoreLifecycle,
)

T = TypeVar("T")
_ALIVE = "(expiration_time IS NULL OR expiration_time > ?)"
_CHUNK = 500  # keys per IN (...) of a bulk get, well below SQLite's variable limit


@dataclass(frozen=True, slots=True)
class SqliteSettings:
    """Parsed ``state.sqlite`` metadata; durations in seconds."""

    connection_string: str
    table: str = "state"
    metadata_table: str = "metadata"
    busy_timeout: float = 2.0
    cleanup_interval: float = 3600.0
    disable_wal: bool = False


class SqliteStore(StoreLifecycle):
    """A state store in a SQLite file, shareable with Dapr's state.sqlite."""

    features = frozenset({Feature.ETAG, Feature.TRANSACTIONAL, Feature.TTL, Feature.QUERY_API})

    def __init__(self, name: str, settings: SqliteSettings) -> None:
        self.name = name
        self.settings = settings
        self._executor: ThreadPoolExecutor | None = None
        self._db: Database | None = None
        self._cleanup: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        """Open the file, migrate the tables and start the periodic purge."""
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"state-sqlite-{self.name}")
        try:
            self._db = await self._run(Database.open, self.settings)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise
        if self.settings.cleanup_interval > 0:
            self._cleanup = asyncio.create_task(self._purge_periodically())

    async def close(self) -> None:
        """Stop the purge, close the connection and the worker thread."""
        if self._cleanup is not None:
            self._cleanup.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._cleanup
            self._cleanup = None
        # New calls are refused at once; calls already queued on the worker finish first.
        executor, self._executor = self._executor, None
        if executor is None:
            return
        if self._db is not None:
            await asyncio.get_running_loop().run_in_executor(executor, self._db.close)
            self._db = None
        executor.shutdown(wait=True)

    async def get(self, key: str) -> Item | None:
        """The live row of ``key``."""
        return (await self.bulk_get([key]))[0].item

    async def bulk_get(self, keys: Sequence[str]) -> list[BulkItem]:
        """Rows of ``keys`` read in chunks, returned in the order of ``keys``."""
        found = await self._run(self._read_many, list(keys))
        return [BulkItem(key, found.get(key)) for key in keys]

    async def set(self, request: SetRequest) -> str:
        """Save one value (its etag check and the write are one statement)."""
        return await self._run(self._write_one, request)

    async def bulk_set(self, requests: Sequence[SetRequest]) -> None:
        """Save each in its own statement; BulkError lists the failures."""
        errors = await self._run(self._write_each, list(requests))
        if errors:
            raise BulkError(errors)

    async def delete(self, request: DeleteRequest) -> None:
        """Delete one key after its etag check."""
        await self._run(self._delete_one, request)

    async def transact(self, operations: Sequence[Operation]) -> None:
        """Every operation inside one BEGIN IMMEDIATE ... COMMIT, rolled back on a failure."""
        await self._run(self._transact, list(operations))

    async def query(self, query: Mapping[str, Any], key_prefix: str) -> QueryResult:
        """Run a Dapr query as one SELECT over SQLite's JSON functions."""
        parsed = parse_query(query)
        sql, params = select_sql(self.settings.table, parsed, key_prefix, timestamp())
        rows = await self._run(self._select, sql, params)
        more = bool(parsed.limit) and len(rows) > parsed.limit
        page = rows[: parsed.limit] if parsed.limit else rows
        items = [Item(k, v.encode(), etag, from_timestamp(exp)) for k, v, etag, exp in page]
        return QueryResult(items, page_token(parsed, len(items), more))

    async def purge_expired(self) -> bool:
        """Delete expired rows unless a purge ran within the interval; True if this one ran."""
        interval_ms = int(self.settings.cleanup_interval * 1000) - 100
        return await self._run(self._purge, interval_ms)

    # -- worker thread -------------------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise StoreUnavailable(f"state store {self.name!r} is not connected")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn, *args)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"state store {self.name!r}: {exc}") from exc

    @property
    def _conn(self) -> sqlite3.Connection:
        assert self._db is not None
        return self._db.conn

    def _read_many(self, keys: list[str]) -> dict[str, Item]:
        table, now, found = self.settings.table, timestamp(), {}
        for start in range(0, len(keys), _CHUNK):
            chunk = keys[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = self._conn.execute(
                f"SELECT key, value, is_binary, etag, expiration_time FROM {table} "
                f"WHERE key IN ({marks}) AND {_ALIVE}",
                [*chunk, now],
            )
            for key, value, is_binary, etag, expires in rows:
                data = base64.b64decode(value) if is_binary else str(value).encode()
                found[key] = Item(key, data, etag, from_timestamp(expires))
        return found

    def _write_one(self, request: SetRequest) -> str:
        table, now = self.settings.table, timestamp()
        stored, is_binary = _encode(request)
        etag = str(uuid.uuid4())
        expires = _expiry(request.ttl)
        expected = given_etag(request)
        if expected is not None:
            cursor = self._conn.execute(
                f"UPDATE {table} SET value = ?, etag = ?, is_binary = ?, update_time = ?, "
                f"expiration_time = ? WHERE key = ? AND etag = ? AND {_ALIVE}",
                (stored, etag, is_binary, now, expires, request.key, expected, now),
            )
            if cursor.rowcount == 0:
                raise ETagMismatch(f"etag mismatch for key {request.key!r}")
        elif needs_absent(request):
            # One statement: replace only a row that is absent or expired.
            cursor = self._conn.execute(
                f"INSERT OR REPLACE INTO {table} "
                "(key, value, is_binary, etag, expiration_time, update_time) "
                f"SELECT ?, ?, ?, ?, ?, ? WHERE NOT EXISTS "
                f"(SELECT 1 FROM {table} WHERE key = ? AND {_ALIVE})",
                (request.key, stored, is_binary, etag, expires, now, request.key, now),
            )
            if cursor.rowcount == 0:
                raise ETagMismatch(f"first-write: key {request.key!r} already exists")
        else:
            self._conn.execute(
                f"INSERT OR REPLACE INTO {table} "
                "(key, value, is_binary, etag, expiration_time, update_time) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (request.key, stored, is_binary, etag, expires, now),
            )
        return etag

    def _write_each(self, requests: list[SetRequest]) -> list[tuple[str, StateError]]:
        errors: list[tuple[str, StateError]] = []
        for request in requests:
            try:
                self._write_one(request)
            except StateError as exc:
                errors.append((request.key, exc))
        return errors

    def _delete_one(self, request: DeleteRequest) -> None:
        expected = given_etag(request)
        table = self.settings.table
        if expected is None:
            self._conn.execute(f"DELETE FROM {table} WHERE key = ?", (request.key,))
            return
        cursor = self._conn.execute(
            f"DELETE FROM {table} WHERE key = ? AND etag = ? AND {_ALIVE}",
            (request.key, expected, timestamp()),
        )
        if cursor.rowcount == 0:
            raise ETagMismatch(f"etag mismatch for key {request.key!r}")

    def _transact(self, operations: list[Operation]) -> None:
        with self._transaction():
            for operation in operations:
                if isinstance(operation, SetRequest):
                    self._write_one(operation)
                else:
                    self._delete_one(operation)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def _select(self, sql: str, params: list[Any]) -> list[tuple[str, str, str, Any]]:
        return list(self._conn.execute(sql, params))

    def _purge(self, interval_ms: int) -> bool:
        assert self._db is not None
        return self._db.purge(interval_ms)

    async def _purge_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.settings.cleanup_interval)
            with contextlib.suppress(StoreUnavailable):
                await self.purge_expired()


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
