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

    -- omnibus's outbox for the change feed (state.feed), beside Dapr's tables; Dapr ignores it
    CREATE TABLE <tableName>_outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,   -- commit order; never reused
        store TEXT NOT NULL,                  -- the component's name (one file, several stores)
        event_id TEXT NOT NULL,               -- the CloudEvent id
        operation TEXT NOT NULL,              -- "upsert" | "delete" | "expire"
        key TEXT NOT NULL,                    -- the app's key, unprefixed
        app_id TEXT NOT NULL,                 -- the app that made the change
        etag TEXT, value BLOB,                -- the new etag and the bytes saved (upserts)
        time TIMESTAMP NOT NULL)              -- when the change was made
        -- a row lives from the commit of its change until its event is published
    CREATE TABLE <tableName>_outbox_lease (store TEXT PRIMARY KEY, relay TEXT, expires REAL)
        -- the relay that publishes a store's records, until ``expires`` (epoch seconds)

Rows past their expiration_time are invisible at once and deleted by a purge every
``cleanupInterval`` (default 1 h; 0 disables), which, as in Dapr, runs only if no process sharing
the file purged within the interval; with a change feed the purge records an ``expire`` for
each row it deletes, in its transaction (:func:`state._sqlite_outbox.record_expired`).  Times
carry milliseconds (Dapr writes whole seconds; both compare correctly as text).
All sqlite3 calls of a store run on one database thread of its own (:class:`bus.dbthread.
DatabaseThread`).  Writes are group-committed: the saves, deletes and transactions waiting while
the thread commits go together into the next ``BEGIN IMMEDIATE ... COMMIT``, so concurrent
callers share one fsync.  Each save or delete checks its etag in the statement that writes it
and a transaction runs under a savepoint of its own, so a failed check fails only its own
request (:mod:`state._sqlite_statements`).  A write with a journal inserts its outbox row right
after its own statement; the relay's claims and deletes of records join the group commit as
well, so they are serialized with the writes of every process sharing the file.

Beyond Dapr: the purge is on by default (Dapr's default interval is 0, off), and the query API
(:mod:`state._sqlite_query`) runs over SQLite's JSON functions.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar, cast

from bus.dbthread import DatabaseThread
from state import _sqlite_outbox as outbox
from state import _sqlite_statements as sql
from state._common import PeriodicPurge
from state._sqlite_db import Database, from_timestamp, timestamp
from state._sqlite_query import select_sql
from state.errors import BulkError, StateError, StoreUnavailable
from state.query import page_token, parse_query
from state.store import (
    BulkItem,
    DeleteRequest,
    Feature,
    Item,
    Operation,
    QueryResult,
    RecordedChange,
    SetRequest,
    StoreLifecycle,
)

T = TypeVar("T")
_BATCH = 256  # writes per transaction at most, so one commit never holds the lock for long
_Write = Callable[[sqlite3.Connection, str], Any]  # (connection, the group commit's timestamp)


@dataclass(frozen=True, slots=True)
class SqliteSettings:
    """Parsed ``state.sqlite`` metadata; durations in seconds."""

    connection_string: str
    table: str = "state"
    metadata_table: str = "metadata"
    busy_timeout: float = 2.0
    cleanup_interval: float = 3600.0
    disable_wal: bool = False
    record_expiry: bool = False  # the store has a change feed: the purge records expiries


class SqliteStore(StoreLifecycle):
    """A state store in a SQLite file, shareable with Dapr's state.sqlite."""

    features = frozenset({Feature.ETAG, Feature.TRANSACTIONAL, Feature.TTL, Feature.QUERY_API})

    def __init__(self, name: str, settings: SqliteSettings) -> None:
        self.name = name
        self.settings = settings
        self._thread: DatabaseThread | None = None
        self._db: Database | None = None
        self._purge = PeriodicPurge()
        self._pending: list[tuple[_Write, asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._reads: list[tuple[list[str], asyncio.Future[dict[str, Item]]]] = []
        self._reader: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        """Open the file, migrate the tables and start the periodic purge."""
        if self._thread is not None:
            return
        self._thread = DatabaseThread(f"state-sqlite-{self.name}")
        try:
            self._db = await self._run(Database.open, self.settings)
        except BaseException:
            self._thread.stop()
            self._thread = None
            raise
        self._purge.start(self.settings.cleanup_interval, self.purge_expired)

    async def close(self) -> None:
        """Stop the purge, commit the waiting writes, close the connection and the thread."""
        await self._purge.stop()
        for task in (self._flusher, self._reader):
            if task is not None:
                await asyncio.shield(task)
        # New calls are refused from here on; calls already queued on the thread finish first.
        thread, self._thread = self._thread, None
        if thread is None:
            return
        try:
            if self._db is not None:
                await thread.submit(self._db.close)
                self._db = None
        finally:
            thread.stop()

    async def get(self, key: str) -> Item | None:
        """The live row of ``key``."""
        return (await self.bulk_get([key]))[0].item

    async def bulk_get(self, keys: Sequence[str]) -> list[BulkItem]:
        """Rows of ``keys``, in their order; reads waiting together share one SELECT."""
        if not keys:
            return []
        if self._thread is None:
            raise StoreUnavailable(f"state store {self.name!r} is not connected")
        future: asyncio.Future[dict[str, Item]] = asyncio.get_running_loop().create_future()
        self._reads.append((list(keys), future))
        if self._reader is None:
            self._reader = asyncio.create_task(self._read_waiting())
        found = await future
        return [BulkItem(key, found.get(key)) for key in keys]

    async def set(self, request: SetRequest) -> str:
        """Save one value (its etag check and the write are one statement)."""
        write = partial(sql.write, table=self.settings.table, store=self.name, request=request)
        return cast(str, await self._write(write))

    async def bulk_set(self, requests: Sequence[SetRequest]) -> None:
        """Save each (in one group commit, each on its own); BulkError lists the failures."""
        results = await asyncio.gather(
            *(self.set(request) for request in requests), return_exceptions=True
        )
        errors: list[tuple[str, StateError]] = []
        for request, result in zip(requests, results, strict=True):
            if isinstance(result, StoreUnavailable | asyncio.CancelledError):
                raise result
            if isinstance(result, StateError):
                errors.append((request.key, result))
            elif isinstance(result, BaseException):
                raise result
        if errors:
            raise BulkError(errors)

    async def delete(self, request: DeleteRequest) -> None:
        """Delete one key after its etag check."""
        table, store = self.settings.table, self.name
        await self._write(partial(sql.remove, table=table, store=store, request=request))

    async def transact(self, operations: Sequence[Operation]) -> None:
        """All operations under one savepoint, undone together on a failed check."""
        ops = list(operations)
        table, store = self.settings.table, self.name
        await self._write(partial(sql.apply, table=table, store=store, operations=ops))

    async def claim_changes(
        self, relay: str, *, lease: float, limit: int
    ) -> list[RecordedChange] | None:
        """The oldest records, read in the group commit that checks (or takes) the lease."""
        table, store = self.settings.table, self.name
        claim = partial(
            outbox.claim, table=table, store=store, relay=relay, lease=lease, limit=limit
        )
        return cast(list[RecordedChange] | None, await self._write(_untimed(claim)))

    async def forget_changes(self, changes: Sequence[RecordedChange]) -> None:
        """Delete published records (in the next group commit)."""
        if changes:
            positions = [change.position for change in changes]
            table = self.settings.table
            await self._write(_untimed(partial(outbox.forget, table=table, positions=positions)))

    async def release_changes(self, relay: str) -> None:
        """Free the relay lease if ``relay`` holds it."""
        table, store = self.settings.table, self.name
        await self._write(_untimed(partial(outbox.release, table=table, store=store, relay=relay)))

    async def query(self, query: Mapping[str, Any], key_prefix: str) -> QueryResult:
        """Run a Dapr query as one SELECT over SQLite's JSON functions."""
        parsed = parse_query(query)
        statement, params = select_sql(self.settings.table, parsed, key_prefix, timestamp())
        rows = await self._run(self._select, statement, params)
        more = bool(parsed.limit) and len(rows) > parsed.limit
        page = rows[: parsed.limit] if parsed.limit else rows
        items = [Item(k, v.encode(), etag, from_timestamp(exp)) for k, v, etag, exp in page]
        return QueryResult(items, page_token(parsed, len(items), more))

    async def purge_expired(self) -> bool:
        """Delete expired rows unless a purge ran within the interval; True if this one ran."""
        s, interval_ms = self.settings, int(self.settings.cleanup_interval * 1000) - 100
        on_expired = None
        if s.record_expiry:
            on_expired = partial(outbox.record_expired, table=s.table, store=self.name)
        return await self._run(self._database.purge, interval_ms, on_expired)

    # -- group commit and the worker thread ------------------------------------------------------

    async def _write(self, one: _Write) -> Any:
        """Queue a write for the next group commit and wait for its own result."""
        if self._thread is None:
            raise StoreUnavailable(f"state store {self.name!r} is not connected")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((one, future))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending[:_BATCH], self._pending[_BATCH:]
                try:
                    results = await self._run(self._database.run_batch, [w for w, _ in batch])
                except Exception as exc:
                    results = [exc] * len(batch)
                except asyncio.CancelledError:
                    for _, future in [*batch, *self._pending]:
                        future.cancel()  # the loop is going away: nobody waits forever
                    raise
                for (_, future), result in zip(batch, results, strict=True):
                    if future.done():
                        continue  # the caller gave up; its write stands, as any in flight
                    if isinstance(result, BaseException):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self._flusher = None

    async def _read_waiting(self) -> None:
        try:
            while self._reads:
                batch, self._reads = self._reads, []
                keys = list(dict.fromkeys(key for wanted, _ in batch for key in wanted))
                try:
                    found = await self._run(self._read, keys)
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for _, future in batch:
                    if not future.done():
                        future.set_result(found)
        finally:
            self._reader = None

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._thread is None:
            raise StoreUnavailable(f"state store {self.name!r} is not connected")
        try:
            return await self._thread.submit(fn, *args)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"state store {self.name!r}: {exc}") from exc

    @property
    def _database(self) -> Database:
        if self._db is None:
            raise StoreUnavailable(f"state store {self.name!r} is not connected")
        return self._db

    def _read(self, keys: list[str]) -> dict[str, Item]:
        return sql.read_many(self._database.conn, self.settings.table, keys)

    def _select(self, statement: str, params: list[Any]) -> list[tuple[str, str, str, Any]]:
        return list(self._database.conn.execute(statement, params))


def _untimed(fn: Callable[[sqlite3.Connection], T]) -> Callable[[sqlite3.Connection, str], T]:
    """A group-commit write that has no use for the batch's timestamp."""
    return lambda conn, _now: fn(conn)
