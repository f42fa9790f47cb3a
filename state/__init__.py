"""State stores: the contract (:mod:`state.store`), its errors and the stores themselves.

Stores: ``state.in-memory`` (:mod:`state.memory`), ``state.sqlite``, ``state.redis``,
``state.postgresql``; :func:`store_from_component` builds one from a component's metadata.
"""

from state.errors import (
    BulkError,
    ETagInvalid,
    ETagMismatch,
    InvalidQuery,
    NotSupported,
    StateError,
    StoreUnavailable,
)
from state.memory import MemorySettings, MemoryStore
from state.settings import store_from_component
from state.store import (
    BulkItem,
    Concurrency,
    Consistency,
    DeleteRequest,
    Feature,
    Item,
    Operation,
    QueryResult,
    SetRequest,
    StateStore,
    StoreLifecycle,
)

__all__ = [
    "BulkError",
    "BulkItem",
    "Concurrency",
    "Consistency",
    "DeleteRequest",
    "ETagInvalid",
    "ETagMismatch",
    "Feature",
    "InvalidQuery",
    "Item",
    "MemorySettings",
    "MemoryStore",
    "NotSupported",
    "Operation",
    "QueryResult",
    "SetRequest",
    "StateError",
    "StateStore",
    "StoreLifecycle",
    "StoreUnavailable",
    "store_from_component",
]
