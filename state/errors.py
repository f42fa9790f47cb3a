"""Errors of the state stores, all under :class:`bus.errors.OmnibusError`.

    OmnibusError
    └── StateError                 base of every state-store error
        ├── ETagMismatch      etag given and differs, or first-write and the key exists  409
        ├── ETagInvalid       etag not parseable for this store                          400
        ├── NotSupported      the store lacks the feature (transactions, query)          500
        ├── StoreUnavailable  backend down or connection error                           500
        ├── InvalidQuery      a query outside Dapr's query language (also InvalidArgument) 400
        └── BulkError         some requests of a bulk set failed; ``errors`` lists them

Driver errors (sqlite3, redis-py, asyncpg) become :class:`StoreUnavailable` with ``raise ... from``.
"""

from __future__ import annotations

from bus.errors import InvalidArgument, OmnibusError


class StateError(OmnibusError):
    """Base of every error of a state store."""


class ETagMismatch(StateError):
    """The etag given differs from the stored one, or first-write found the key present."""


class ETagInvalid(StateError):
    """The etag cannot be parsed by this store (e.g. not an integer for Redis)."""


class NotSupported(StateError):
    """The store lacks the feature asked for (transactions, query)."""


class StoreUnavailable(StateError):
    """The backend is down or the connection failed; the operation may be retried."""


class InvalidQuery(StateError, InvalidArgument):
    """A query outside the Dapr query language (unknown operator, bad page, bad sort)."""


class BulkError(StateError):
    """Some requests of a bulk set failed; the others were applied."""

    def __init__(self, errors: list[tuple[str, StateError]]) -> None:
        self.errors = errors
        keys = ", ".join(key for key, _ in errors[:5])
        more = f" and {len(errors) - 5} more" if len(errors) > 5 else ""
        super().__init__(f"{len(errors)} request(s) of the bulk set failed: {keys}{more}")
