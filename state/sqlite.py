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
the thread commits go together into the next transaction, so concurrent callers share one
fsync; reads waiting together share one SELECT.  The thread takes both from their queues
itself, batch after batch (:mod:`state._sqlite_queue`), so a batch costs no trip through the
event loop.  Each save or delete checks its etag in the statement that writes it and a
transaction runs under a savepoint of its own, so a failed check fails only its own request;
neighbouring plain saves share one multi-row statement, and a batch of nothing else is that one
statement, its own transaction (:mod:`state._sqlite_statements`).  A write with a journal
inserts its outbox row right after its own statement; the relay's claims and deletes of records
join the group commit as well, so they are serialized with the writes of every process sharing
the file.

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
from state._sqlite_queue import BatchQueue
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
_READS = 256  # reads (of any number of keys) per SELECT batch


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
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop it connected on
        self._db: Database | None = None
        self._purge = PeriodicPurge()
        self._writes: BatchQueue[sql.Write, Any] = BatchQueue(name, self._commit, batch=_BATCH)
        self._reads: BatchQueue[list[str], dict[str, Item]] = BatchQueue(
            name, self._read_batch, batch=_READS
        )

    async def connect(self) -> None:
        """Open the file, migrate the tables and start the periodic purge."""
        if self._thread is not None:
            return
        self._thread = DatabaseThread(f"state-sqlite-{self.name}")
        # Looked up once: asyncio.get_running_loop checks the pid, a system call per request.
        self._loop = asyncio.get_running_loop()
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
        await self._writes.idle()
        await self._reads.idle()
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
        if self._thread is None or self._loop is None:
            raise StoreUnavailable(f"state store {self.name!r} is not connected")
        found = await self._reads.put(self._loop, self._thread, list(keys))
        return [BulkItem(key, found.get(key)) for key in keys]

    async def set(self, request: SetRequest) -> str:
        """Save one value (its etag check and the write are one statement)."""
        if sql.is_plain(request):
            return cast(str, await self._write(request))  # may share a statement
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

    async def _write(self, one: sql.Write) -> Any:
        """Queue a write for the next group commit and wait for its own result."""
        if self._thread is None or self._loop is None:
            raise StoreUnavailable(f"state store {self.name!r} is not connected")
        return await self._writes.put(self._loop, self._thread, one)

    def _commit(self, writes: list[sql.Write]) -> list[Any]:
        return sql.group_commit(self._database.conn, self.settings.table, writes)

    def _read_batch(self, wanted: list[list[str]]) -> list[dict[str, Item]]:
        """One SELECT for the keys of every read in the batch; each read gets the rows found."""
        keys = list(dict.fromkeys(key for keys in wanted for key in keys))
        found = sql.read_many(self._database.conn, self.settings.table, keys)
        return [found] * len(wanted)

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

    def _select(self, statement: str, params: list[Any]) -> list[tuple[str, str, str, Any]]:
        return list(self._database.conn.execute(statement, params))


def _untimed(fn: Callable[[sqlite3.Connection], T]) -> sql.Write:
    """A group-commit write that has no use for the batch's timestamp."""
    return lambda conn, _now: fn(conn)
