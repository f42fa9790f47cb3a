"""The state-store contract: the values a store takes and returns, and the protocol it follows.

Keys arrive fully prefixed (``<app-id>||<key>``, applied by the caller); values are bytes exactly
as the application sent them (JSON values as their JSON text).  Every store is an async context
manager; ``connect`` is idempotent.  Errors are those of :mod:`state.errors`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable


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


@dataclass(frozen=True, slots=True)
class DeleteRequest:
    """Delete one key; an absent key is no error unless an etag was given."""

    key: str
    etag: str | None = None
    concurrency: Concurrency = Concurrency.LAST_WRITE
    consistency: Consistency = Consistency.EVENTUAL


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
