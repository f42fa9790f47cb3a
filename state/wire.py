"""The state service's requests and replies as they travel on the bus (call mode).

A request is a :class:`bus.envelope.Envelope`; its ``attributes`` say what is asked:

    op       get | bulk_get | set | delete | transact | query
    caller   the calling sidecar's app id (the serving sidecar applies scopes and key prefixes)
    spec     JSON text describing the operation; values are not in it

and its ``body`` holds the values, back to back, raw: each item of ``spec`` that carries a value
gives its length as ``n``, so a 4 MiB value costs 4 MiB on the wire, no JSON escaping or base64.
Replies have the same shape (``spec`` attribute, values in the body); an absent key is status 204.
Keys on the wire are the app's keys, never prefixed: only the server knows the component's
``keyPrefix``.  A sidecar that serves a store itself skips all of this: it calls
:meth:`state.service.StateService.execute` with the same values.

Errors travel as error replies whose code is one of :data:`ERROR_CODES`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from bus.envelope import Envelope
from bus.errors import InvalidArgument, RemoteError
from state.errors import (
    BulkError,
    ETagInvalid,
    ETagMismatch,
    InvalidQuery,
    NotSupported,
    StateError,
    StoreUnavailable,
)
from state.keys import InvalidKey
from state.store import (
    BulkItem,
    Concurrency,
    Consistency,
    DeleteRequest,
    Item,
    Operation,
    QueryResult,
    SetRequest,
)


class StoreNotFound(StateError):
    """No store of that name serves this caller (absent, or its ``scopes`` exclude the app)."""


class ChangeFeedError(StateError):
    """The change was committed but its change event could not be published."""


# code on the wire <-> the error class the caller raises again
ERROR_CODES: dict[str, type[Exception]] = {
    "STORE_NOT_FOUND": StoreNotFound,
    "ETAG_MISMATCH": ETagMismatch,
    "ETAG_INVALID": ETagInvalid,
    "NOT_SUPPORTED": NotSupported,
    "STORE_UNAVAILABLE": StoreUnavailable,
    "INVALID_QUERY": InvalidQuery,
    "INVALID_KEY": InvalidKey,
    "CHANGE_FEED": ChangeFeedError,
    "INVALID_ARGUMENT": InvalidArgument,
    "STATE_ERROR": StateError,
}


@dataclass(frozen=True, slots=True)
class Get:
    """Read one key."""

    key: str


@dataclass(frozen=True, slots=True)
class BulkGet:
    """Read several keys; one entry each, in order."""

    keys: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Save:
    """Save one or more values (not atomically, as Dapr's bulk save)."""

    requests: tuple[SetRequest, ...]


@dataclass(frozen=True, slots=True)
class Delete:
    """Delete one key."""

    request: DeleteRequest


@dataclass(frozen=True, slots=True)
class Transact:
    """Apply operations atomically, in order."""

    operations: tuple[Operation, ...]


@dataclass(frozen=True, slots=True)
class Query:
    """Run a Dapr query over the caller's keys."""

    query: Mapping[str, Any]


Request = Get | BulkGet | Save | Delete | Transact | Query
Result = Item | None | list[BulkItem] | QueryResult


class ServiceError(StateError):
    """What the replier raises so the error reply carries a code (see :data:`ERROR_CODES`)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def to_service_error(exc: Exception) -> ServiceError:
    """The coded error for one of our errors; BulkError carries every failed key as JSON."""
    if isinstance(exc, BulkError):
        failed = [[key, _code(error), str(error)] for key, error in exc.errors]
        return ServiceError("BULK_ERROR", orjson.dumps(failed).decode())
    return ServiceError(_code(exc), str(exc))


def _code(exc: Exception) -> str:
    for code, cls in ERROR_CODES.items():
        if type(exc) is cls:
            return code
    for code, cls in ERROR_CODES.items():
        if isinstance(exc, cls):
            return code
    return "STATE_ERROR"


def from_remote(error: RemoteError) -> Exception:
    """The error a caller raises for an error reply of the state service."""
    if error.code == "BULK_ERROR":
        try:
            failed = orjson.loads(error.message)
            return BulkError([(k, _error(code, text)) for k, code, text in failed])
        except (orjson.JSONDecodeError, TypeError, ValueError):
            return StateError(error.message)
    if error.code in ERROR_CODES:
        return ERROR_CODES[error.code](error.message)
    return StoreUnavailable(f"the state service failed: {error}")


def _error(code: str, text: str) -> StateError:
    cls = ERROR_CODES.get(code, StateError)
    return cls(text) if issubclass(cls, StateError) else StateError(text)


# -- requests ---------------------------------------------------------------------------------


def encode_request(caller: str, request: Request) -> Envelope:
    """The envelope that carries ``request`` of ``caller``."""
    blobs: list[bytes] = []
    op, spec = _request_spec(request, blobs)
    attributes = {"op": op, "caller": caller, "spec": orjson.dumps(spec).decode()}
    return Envelope(body=b"".join(blobs), attributes=attributes)


def _request_spec(request: Request, blobs: list[bytes]) -> tuple[str, Any]:
    if isinstance(request, Get):
        return "get", {"k": request.key}
    if isinstance(request, BulkGet):
        return "bulk_get", {"k": list(request.keys)}
    if isinstance(request, Save):
        return "set", [_set_spec(r, blobs) for r in request.requests]
    if isinstance(request, Delete):
        return "delete", _delete_spec(request.request)
    if isinstance(request, Transact):
        return "transact", [_operation_spec(o, blobs) for o in request.operations]
    return "query", {"q": request.query}


def _set_spec(request: SetRequest, blobs: list[bytes]) -> dict[str, Any]:
    blobs.append(request.value)
    return {
        "k": request.key,
        "n": len(request.value),
        "e": request.etag,
        "c": request.concurrency.value,
        "s": request.consistency.value,
        "t": request.ttl,
        "ct": request.content_type,
        "b": request.is_binary,
    }


def _delete_spec(request: DeleteRequest) -> dict[str, Any]:
    return {
        "k": request.key,
        "e": request.etag,
        "c": request.concurrency.value,
        "s": request.consistency.value,
    }


def _operation_spec(operation: Operation, blobs: list[bytes]) -> dict[str, Any]:
    if isinstance(operation, SetRequest):
        return {"op": "set", **_set_spec(operation, blobs)}
    return {"op": "delete", **_delete_spec(operation)}


def decode_request(envelope: Envelope) -> tuple[str, Request]:
    """``(caller, request)`` of a request envelope; InvalidArgument if it is not one."""
    try:
        caller = envelope.attributes["caller"]
        op = envelope.attributes["op"]
        spec = orjson.loads(envelope.attributes["spec"])
        return caller, _request(op, spec, _Blobs(envelope.body))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InvalidArgument(f"malformed state request: {exc!r}") from None


def _request(op: str, spec: Any, blobs: _Blobs) -> Request:
    if op == "get":
        return Get(str(spec["k"]))
    if op == "bulk_get":
        return BulkGet(tuple(str(k) for k in spec["k"]))
    if op == "set":
        return Save(tuple(_set_request(s, blobs) for s in spec))
    if op == "delete":
        return Delete(_delete_request(spec))
    if op == "transact":
        return Transact(tuple(_operation(s, blobs) for s in spec))
    if op == "query":
        return Query(spec["q"])
    raise InvalidArgument(f"unknown state operation {op!r}")


def _set_request(spec: Mapping[str, Any], blobs: _Blobs) -> SetRequest:
    return SetRequest(
        key=str(spec["k"]),
        value=blobs.take(int(spec["n"])),
        etag=spec["e"],
        concurrency=Concurrency(spec["c"]),
        consistency=Consistency(spec["s"]),
        ttl=spec["t"],
        content_type=spec["ct"],
        is_binary=bool(spec["b"]),
    )


def _delete_request(spec: Mapping[str, Any]) -> DeleteRequest:
    return DeleteRequest(
        key=str(spec["k"]),
        etag=spec["e"],
        concurrency=Concurrency(spec["c"]),
        consistency=Consistency(spec["s"]),
    )


def _operation(spec: Mapping[str, Any], blobs: _Blobs) -> Operation:
    if spec["op"] == "set":
        return _set_request(spec, blobs)
    return _delete_request(spec)


class _Blobs:
    """Reads the values of a body in order."""

    def __init__(self, body: bytes) -> None:
        self._view = memoryview(body)
        self._at = 0

    def take(self, size: int) -> bytes:
        end = self._at + size
        if size < 0 or end > len(self._view):
            raise ValueError("value lengths exceed the body")
        value = bytes(self._view[self._at : end])
        self._at = end
        return value


# -- replies ----------------------------------------------------------------------------------


def encode_result(result: Result) -> Envelope:
    """The reply envelope for what the store answered."""
    if result is None:
        return Envelope(status=204)
    blobs: list[bytes] = []
    if isinstance(result, Item):
        spec: Any = _item_spec(result, blobs)
    elif isinstance(result, QueryResult):
        spec = {"r": [_item_spec(i, blobs) for i in result.results], "t": result.token}
    else:
        spec = [_bulk_spec(b, blobs) for b in result]
    return Envelope(status=200, body=b"".join(blobs), attributes={"spec": _dumps(spec)})


def _dumps(spec: Any) -> str:
    return orjson.dumps(spec).decode()


def _item_spec(item: Item, blobs: list[bytes]) -> dict[str, Any]:
    blobs.append(item.value)
    expires = None if item.expires_at is None else item.expires_at.timestamp()
    return {
        "k": item.key,
        "n": len(item.value),
        "e": item.etag,
        "x": expires,
        "ct": item.content_type,
    }


def _bulk_spec(entry: BulkItem, blobs: list[bytes]) -> dict[str, Any]:
    item = None if entry.item is None else _item_spec(entry.item, blobs)
    return {"k": entry.key, "i": item, "err": entry.error}


def decode_result(request: Request, envelope: Envelope) -> Result:
    """What the server answered to ``request``; InvalidArgument for a malformed reply."""
    if envelope.status == 204 or isinstance(request, Save | Delete | Transact):
        return None
    try:
        spec = orjson.loads(envelope.attributes["spec"])
        blobs = _Blobs(envelope.body)
        if isinstance(request, Get):
            return _item(spec, blobs)
        if isinstance(request, Query):
            return QueryResult([_item(s, blobs) for s in spec["r"]], spec["t"])
        return list(_bulk_items(spec, blobs))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InvalidArgument(f"malformed state reply: {exc!r}") from None


def _item(spec: Mapping[str, Any], blobs: _Blobs) -> Item:
    expires = spec["x"]
    return Item(
        key=str(spec["k"]),
        value=blobs.take(int(spec["n"])),
        etag=spec["e"],
        expires_at=None if expires is None else datetime.fromtimestamp(expires, UTC),
        content_type=spec["ct"],
    )


def _bulk_items(spec: Sequence[Mapping[str, Any]], blobs: _Blobs) -> Iterator[BulkItem]:
    for entry in spec:
        item = None if entry["i"] is None else _item(entry["i"], blobs)
        yield BulkItem(str(entry["k"]), item, entry["err"])
