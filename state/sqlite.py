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
fsync.  The thread takes them from the queue itself, batch after batch (:meth:`SqliteStore.
_drain`), and hands each batch's results back in one call: a busy event loop holds the GIL for
a whole turn of its ready callbacks, so every hop through it, or every time the thread must
take the GIL back, costs the commit about a turn.  Each save or delete checks its etag in the
statement that writes it and a transaction runs under a savepoint of its own, so a failed check
fails only its own request; neighbouring plain saves share one multi-row statement, and a batch
of nothing else is that one statement, its own transaction (:mod:`state._sqlite_statements`).
A write with a journal inserts its outbox row right after its own statement; the relay's claims
and deletes of records join the group commit as well, so they are serialized with the writes of
every process sharing the file.

Beyond Dapr: the purge is on by default (Dapr's default interval is 0, off), and the query API
(:mod:`state._sqlite_query`) runs over SQLite's JSON functions.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import deque
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
_DRAIN_BATCHES = 8  # group commits per turn of the database thread


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
        # Writes waiting for a group commit; appended on the loop, taken on the database thread.
        self._pending: deque[tuple[sql.Write, asyncio.Future[Any]]] = deque()
        self._committing: asyncio.Future[None] | None = None  # the thread's drain, while it runs
        self._reads: list[tuple[list[str], asyncio.Future[dict[str, Item]]]] = []
        self._reader: asyncio.Task[None] | None = None

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
        while self._committing is not None or self._reader is not None:
            for task in (self._committing, self._reader):
                if task is not None:
                    await asyncio.shield(task)
            await asyncio.sleep(0)  # the drain's done callback may have started another
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
        future: asyncio.Future[dict[str, Item]] = self._loop.create_future()
        self._reads.append((list(keys), future))
        if self._reader is None:
            self._reader = self._loop.create_task(self._read_waiting())
        found = await future
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
        future: asyncio.Future[Any] = self._loop.create_future()
        self._pending.append((one, future))
        if self._committing is None:
            self._start_commits()
        return await future

    def _start_commits(self) -> None:
        """Have the database thread commit the waiting writes (one drain at a time)."""
        assert self._thread is not None
        self._committing = self._thread.submit(self._drain, self._loop)
        self._committing.add_done_callback(self._drained)

    def _drained(self, committing: asyncio.Future[None]) -> None:
        """On the loop: the drain ended; start another for writes it did not see."""
        self._committing = None
        error = None if committing.cancelled() else committing.exception()
        if committing.cancelled() or error is not None:
            self._fail_pending(StoreUnavailable(f"state store {self.name!r}: {error or 'closed'}"))
        elif self._pending and self._thread is not None:
            self._start_commits()

    def _fail_pending(self, exc: BaseException) -> None:
        while self._pending:
            _, future = self._pending.popleft()
            if not future.done():
                future.set_exception(exc)

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the database thread: commit what waits, batch after batch, and hand each batch's
        results to the loop; the writes queued while a batch commits make the next one, without
        a trip through the event loop (which, busy, would let the thread wait for the GIL)."""
        for _ in range(_DRAIN_BATCHES):  # then let reads queued behind the drain run
            batch = [self._pending.popleft() for _ in range(min(_BATCH, len(self._pending)))]
            if not batch:
                return
            try:
                results = sql.group_commit(
                    self._database.conn, self.settings.table, [w for w, _ in batch]
                )
            except sqlite3.Error as exc:
                results = [StoreUnavailable(f"state store {self.name!r}: {exc}")] * len(batch)
            except Exception as exc:
                results = [exc] * len(batch)
            try:
                loop.call_soon_threadsafe(_settle, batch, results)
            except RuntimeError:  # the loop is closed: nobody waits any more
                return

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


def _settle(batch: list[tuple[sql.Write, asyncio.Future[Any]]], results: list[Any]) -> None:
    """Hand each write of a committed batch its own result."""
    for (_, future), result in zip(batch, results, strict=True):
        if future.done():
            continue  # the caller gave up; its write stands, as any in flight
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)


def _untimed(fn: Callable[[sqlite3.Connection], T]) -> sql.Write:
    """A group-commit write that has no use for the batch's timestamp."""
    return lambda conn, _now: fn(conn)
