"""``state.in-memory``: a real state store held in a dict of this process.

Storage layout: ``{key: _Entry(value, version, expires, content_type, is_binary)}``.  Etags are the
decimal text of a per-store counter, so an etag is never reused, even after delete and re-create.
Expired entries are invisible at once and dropped by a sweep every 1,000 writes and every
``cleanup_interval`` seconds (0 disables); with a change feed the sweep records an ``expire`` of
each entry it drops (only entries expired at that moment).
Every operation runs without awaiting in between, so each (and each transaction) is atomic in
the event loop; nothing is shared across processes, as with Dapr's in-memory store.

Outbox (the change feed, :mod:`state.store`): ``{position: RecordedChange}`` in commit order,
appended by the write that makes the change, deleted once the relay published it; the relay lease
is ``(relay, monotonic expiry)``.  Nothing survives the process, so nothing survives a crash; the
relay reads and publishes these records the same way it does on the other stores.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal

from state._common import PeriodicPurge, epoch_to_datetime, expiry_epoch, given_etag, needs_absent
from state.errors import BulkError, ETagInvalid, ETagMismatch, StateError
from state.feed import expiry_journal
from state.query import parse_query, run_query
from state.store import (
    BulkItem,
    DeleteRequest,
    Feature,
    Item,
    Journal,
    Operation,
    QueryResult,
    RecordedChange,
    SetRequest,
    StoreLifecycle,
)

_SWEEP_EVERY = 1000


@dataclass(frozen=True, slots=True)
class MemorySettings:
    """``state.in-memory`` takes no metadata but the change feed's (``record_expiry``)."""

    cleanup_interval: float = 60.0
    record_expiry: bool = False  # the store has a change feed: the sweep records expiries


@dataclass(frozen=True, slots=True)
class _Entry:
    value: bytes
    version: int
    expires: float | None
    content_type: str | None
    is_binary: bool

    def alive(self, now: float) -> bool:
        return self.expires is None or self.expires > now


class MemoryStore(StoreLifecycle):
    """A dict-backed store with etags, transactions, TTLs and queries."""

    features = frozenset({Feature.ETAG, Feature.TRANSACTIONAL, Feature.TTL, Feature.QUERY_API})

    def __init__(self, name: str, settings: MemorySettings | None = None) -> None:
        self.name = name
        self.settings = settings or MemorySettings()
        self._data: dict[str, _Entry] = {}
        self._version = 0
        self._writes = 0
        self._outbox: dict[int, RecordedChange] = {}
        self._recorded = 0
        self._lease: tuple[str, float] | None = None
        self._purge = PeriodicPurge()

    async def connect(self) -> None:
        """Start the periodic sweep."""
        self._purge.start(self.settings.cleanup_interval, self.purge_expired)

    async def close(self) -> None:
        """Stop the sweep (the data stays: reopening finds it)."""
        await self._purge.stop()

    async def purge_expired(self) -> bool:
        """Drop the expired entries, recording an ``expire`` of each with a change feed."""
        self._sweep()
        return True

    async def get(self, key: str) -> Item | None:
        """The live item under ``key``."""
        entry = self._live(self._data, key, time.time())
        return None if entry is None else _item(key, entry)

    async def bulk_get(self, keys: Sequence[str]) -> list[BulkItem]:
        """One entry per key, in order."""
        now = time.time()
        result = []
        for key in keys:
            entry = self._live(self._data, key, now)
            result.append(BulkItem(key, None if entry is None else _item(key, entry)))
        return result

    async def set(self, request: SetRequest) -> str:
        """Save one value after its etag check."""
        records: list[RecordedChange] = []
        entry = self._apply_set(self._data, request, time.time(), records)
        self._commit(records)
        self._after_write()
        return str(entry.version)

    async def bulk_set(self, requests: Sequence[SetRequest]) -> None:
        """Save each; BulkError lists the ones whose check failed."""
        errors: list[tuple[str, StateError]] = []
        for request in requests:
            try:
                await self.set(request)
            except StateError as exc:
                errors.append((request.key, exc))
        if errors:
            raise BulkError(errors)

    async def delete(self, request: DeleteRequest) -> None:
        """Delete one key after its etag check."""
        records: list[RecordedChange] = []
        self._apply_delete(self._data, request, time.time(), records)
        self._commit(records)

    async def transact(self, operations: Sequence[Operation]) -> None:
        """Check and stage every operation on an overlay, then apply them all at once."""
        now = time.time()
        staged: dict[str, _Entry | None] = {}
        records: list[RecordedChange] = []
        view = _Overlay(self._data, staged)
        for operation in operations:
            if isinstance(operation, SetRequest):
                self._apply_set(view, operation, now, records)
            else:
                self._apply_delete(view, operation, now, records)
        for key, entry in staged.items():
            if entry is None:
                self._data.pop(key, None)
            else:
                self._data[key] = entry
        self._commit(records)
        self._after_write()

    async def claim_changes(
        self, relay: str, *, lease: float, limit: int
    ) -> list[RecordedChange] | None:
        """The oldest records while ``relay`` holds the lease (taken when free or lapsed)."""
        now = time.monotonic()
        if self._lease is not None and self._lease[0] != relay and self._lease[1] > now:
            return None
        self._lease = (relay, now + lease)
        return [change for _, change in zip(range(limit), self._outbox.values(), strict=False)]

    async def forget_changes(self, changes: Sequence[RecordedChange]) -> None:
        """Delete published records."""
        for change in changes:
            self._outbox.pop(int(change.position), None)

    async def release_changes(self, relay: str) -> None:
        """Free the lease if ``relay`` holds it."""
        if self._lease is not None and self._lease[0] == relay:
            self._lease = None

    async def query(self, query: Mapping[str, Any], key_prefix: str) -> QueryResult:
        """Filter, sort and page the JSON values under ``key_prefix``."""
        now = time.time()
        values = (
            (key, entry.value)
            for key, entry in self._data.items()
            if key.startswith(key_prefix) and entry.alive(now) and not entry.is_binary
        )
        keys, token = run_query(parse_query(query), values)
        return QueryResult([_item(key, self._data[key]) for key in keys], token)

    def _live(self, data: _Store, key: str, now: float) -> _Entry | None:
        entry = data.get(key)
        if entry is None or entry.alive(now):
            return entry
        return None

    def _check(self, data: _Store, key: str, etag: str | None, now: float) -> _Entry | None:
        current = self._live(data, key, now)
        if etag is None:
            return current
        try:
            expected = int(etag)
        except ValueError as exc:
            raise ETagInvalid(f"etag {etag!r} of key {key!r} is not one this store issued") from exc
        if current is None or current.version != expected:
            raise ETagMismatch(f"etag mismatch for key {key!r}")
        return current

    def _apply_set(
        self, data: _Store, request: SetRequest, now: float, records: list[RecordedChange]
    ) -> _Entry:
        current = self._check(data, request.key, given_etag(request), now)
        if needs_absent(request) and current is not None:
            raise ETagMismatch(f"first-write: key {request.key!r} already exists")
        self._version += 1
        entry = _Entry(
            request.value,
            self._version,
            expiry_epoch(request.ttl, now),
            request.content_type,
            request.is_binary,
        )
        data[request.key] = entry
        if request.journal is not None:
            etag = str(entry.version)
            records.append(_record(request.journal, "upsert", etag, request.value, now))
        return entry

    def _apply_delete(
        self, data: _Store, request: DeleteRequest, now: float, records: list[RecordedChange]
    ) -> None:
        self._check(data, request.key, given_etag(request), now)
        data.pop(request.key, None)
        if request.journal is not None:
            records.append(_record(request.journal, "delete", None, None, now))

    def _commit(self, records: list[RecordedChange]) -> None:
        """Append the records of a write that succeeded, numbered in commit order."""
        for record in records:
            self._recorded += 1
            self._outbox[self._recorded] = replace(record, position=str(self._recorded))

    def _after_write(self) -> None:
        self._writes += 1
        if self._writes % _SWEEP_EVERY == 0:
            self._sweep()

    def _sweep(self) -> None:
        now, records = time.time(), []
        for key in [k for k, e in self._data.items() if not e.alive(now)]:
            entry = self._data.pop(key)
            if self.settings.record_expiry:
                etag = str(entry.version)
                records.append(_record(expiry_journal(key), "expire", etag, None, now))
        self._commit(records)


class _Overlay:
    """A dict view of the store with a transaction's staged changes on top."""

    def __init__(self, base: dict[str, _Entry], staged: dict[str, _Entry | None]) -> None:
        self._base = base
        self._staged = staged

    def get(self, key: str) -> _Entry | None:
        if key in self._staged:
            return self._staged[key]
        return self._base.get(key)

    def __setitem__(self, key: str, entry: _Entry) -> None:
        self._staged[key] = entry

    def pop(self, key: str, default: None = None) -> _Entry | None:
        entry = self.get(key)
        self._staged[key] = None
        return entry


_Store = dict[str, _Entry] | _Overlay


def _record(
    journal: Journal,
    operation: Literal["upsert", "delete", "expire"],
    etag: str | None,
    value: bytes | None,
    now: float,
) -> RecordedChange:
    moment = datetime.fromtimestamp(now, UTC)
    return RecordedChange(
        "", journal.event_id, operation, journal.key, journal.app_id, etag, value, moment
    )


def _item(key: str, entry: _Entry) -> Item:
    return Item(
        key,
        entry.value,
        str(entry.version),
        epoch_to_datetime(entry.expires),
        entry.content_type,
    )
