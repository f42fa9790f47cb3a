"""The state-store contract: the values a store takes and returns, and the protocol it follows.

Keys arrive fully prefixed (``<app-id>||<key>``, applied by the caller); values are bytes exactly
as the application sent them (JSON values as their JSON text).  Every store is an async context
manager; ``connect`` is idempotent.  Errors are those of :mod:`state.errors`.

The outbox (for the change feed, :mod:`state.feed`): a write whose request carries a
:class:`Journal` also records its change, in the same transaction or atomic script as the write
itself, so a change is committed with its record or not at all.  A failed check (etag,
first-write, a transaction rolled back) records nothing.  A store keeps its records in commit
order, each with the new etag the store gave the value; the relay reads them with
:meth:`StateStore.claim_changes` and deletes them with :meth:`StateStore.forget_changes` once
published.  One relay at a time holds a store's *relay lease* (a row, a key, with an expiry on the
store itself, so relays of several sidecars serving one store agree); the others read nothing
until it lapses or is released.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from types import TracebackType
from typing import Any, Literal, Protocol, Self, runtime_checkable


class Feature(StrEnum):
    """Capabilities a store reports (Dapr's names, shown by ``/v1.0/metadata``)."""

    ETAG = "ETAG"
    TRANSACTIONAL = "TRANSACTIONAL"
    TTL = "TTL"
    QUERY_API = "QUERY_API"
    ACTOR = "ACTOR"


class Concurrency(StrEnum):
    """Dapr's concurrency option: first-write needs the etag (or absence) to match."""

    FIRST_WRITE = "first-write"
    LAST_WRITE = "last-write"


class Consistency(StrEnum):
    """Dapr's consistency option; every store here is strongly consistent, so it is advisory."""

    EVENTUAL = "eventual"
    STRONG = "strong"


@dataclass(frozen=True, slots=True)
class Item:
    """A stored value as a get returns it."""

    key: str
    value: bytes
    etag: str | None
    expires_at: datetime | None = None
    content_type: str | None = None


def _event_id() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True, slots=True)
class Journal:
    """Asks a store to record a write's change in its outbox, atomically with the write.

    ``key`` is the app's key (unprefixed), as the change event reports it; ``event_id`` becomes
    the CloudEvent id, the same on every re-publish of the record.
    """

    app_id: str
    key: str
    event_id: str = field(default_factory=_event_id)


@dataclass(frozen=True, slots=True)
class SetRequest:
    """Save one value.

    ``ttl``: seconds until expiry; ``None`` keeps no TTL (clears an existing one, as Dapr does);
    ``-1`` never expires.  0 and values below -1 are rejected by the caller.
    """

    key: str
    value: bytes
    etag: str | None = None
    concurrency: Concurrency = Concurrency.LAST_WRITE
    consistency: Consistency = Consistency.EVENTUAL
    ttl: int | None = None
    content_type: str | None = None
    is_binary: bool = False
    journal: Journal | None = None

    def stored_as(self, key: str, journal: Journal | None) -> SetRequest:
        """This save under the storage key ``key``, with ``journal`` (cheaper than ``replace``)."""
        return SetRequest(
            key=key,
            value=self.value,
            etag=self.etag,
            concurrency=self.concurrency,
            consistency=self.consistency,
            ttl=self.ttl,
            content_type=self.content_type,
            is_binary=self.is_binary,
            journal=journal,
        )


@dataclass(frozen=True, slots=True)
class DeleteRequest:
    """Delete one key; an absent key is no error unless an etag was given.

    With a ``journal`` the delete is recorded even when the key was absent (no etag given).
    """

    key: str
    etag: str | None = None
    concurrency: Concurrency = Concurrency.LAST_WRITE
    consistency: Consistency = Consistency.EVENTUAL
    journal: Journal | None = None

    def stored_as(self, key: str, journal: Journal | None) -> DeleteRequest:
        """This delete under the storage key ``key``, with ``journal``."""
        return DeleteRequest(
            key=key,
            etag=self.etag,
            concurrency=self.concurrency,
            consistency=self.consistency,
            journal=journal,
        )


Operation = SetRequest | DeleteRequest
"""One step of a transaction; a transaction applies its steps atomically, in order."""


@dataclass(frozen=True, slots=True)
class BulkItem:
    """One entry of a bulk get: the item, ``None`` when absent, or the error reading it."""

    key: str
    item: Item | None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class QueryResult:
    """A page of query results and the token of the next page (``None`` on the last)."""

    results: list[Item]
    token: str | None


@dataclass(frozen=True, slots=True)
class RecordedChange:
    """One change a store recorded in its outbox with the write that made it.

    ``position`` is the store's own handle on the record (a row number, a stream entry id),
    increasing in commit order and never reused; ``etag`` and ``value`` are set on upserts
    (an expiry carries the etag the value had).
    """

    position: str
    event_id: str
    operation: Literal["upsert", "delete", "expire"]  # expire: removed by the store's TTL purge
    key: str
    app_id: str
    etag: str | None
    value: bytes | None
    time: datetime


@runtime_checkable
class StateStore(Protocol):
    """What every state store implements."""

    name: str
    features: frozenset[Feature]

    async def connect(self) -> None:
        """Open connections (idempotent)."""

    async def close(self) -> None:
        """Close connections and stop background work (idempotent)."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def get(self, key: str) -> Item | None:
        """The item stored under ``key``; ``None`` when absent or expired."""

    async def bulk_get(self, keys: Sequence[str]) -> list[BulkItem]:
        """One entry per key, in the order of ``keys``."""

    async def set(self, request: SetRequest) -> str:
        """Save and return the new etag; ETagMismatch/ETagInvalid on a failed check."""

    async def bulk_set(self, requests: Sequence[SetRequest]) -> None:
        """Save each (not atomically); raise BulkError listing the failed ones after trying all."""

    async def delete(self, request: DeleteRequest) -> None:
        """Delete; absent without etag is fine, absent or different with etag is ETagMismatch."""

    async def transact(self, operations: Sequence[Operation]) -> None:
        """Apply all operations atomically and in order; NotSupported without TRANSACTIONAL."""

    async def query(self, query: Mapping[str, Any], key_prefix: str) -> QueryResult:
        """Run a Dapr query over JSON values of keys starting with ``key_prefix``.

        NotSupported without QUERY_API; InvalidQuery for a malformed query.
        """

    async def claim_changes(
        self, relay: str, *, lease: float, limit: int
    ) -> list[RecordedChange] | None:
        """The oldest ``limit`` recorded changes, oldest first, if ``relay`` holds the relay lease.

        Takes the lease when it is free or lapsed and keeps it ``lease`` seconds from now;
        ``None`` while another relay holds it.
        """

    async def forget_changes(self, changes: Sequence[RecordedChange]) -> None:
        """Delete these records (their events are published); records already gone are fine."""

    async def release_changes(self, relay: str) -> None:
        """Give the relay lease up if ``relay`` holds it, so another relay takes over at once."""


class StoreLifecycle:
    """``async with`` for a store in terms of its ``connect`` and ``close``."""

    async def connect(self) -> None:
        """Open connections (idempotent)."""

    async def close(self) -> None:
        """Close connections (idempotent)."""

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
