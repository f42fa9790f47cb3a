"""The bodies of Dapr's state requests: save items, transaction operations, options, TTLs.

Read with :mod:`runtime.api.body`'s Go field matching; every problem is a 400
``ERR_MALFORMED_REQUEST`` (:class:`~runtime.api.dapr_errors.ApiError`), except an unknown
transaction operation, which is Dapr's 400 ``ERR_NOT_SUPPORTED_STATE_OPERATION``.  A JSON value
becomes its JSON text; ``ttlInSeconds`` is an integer from -1 (never) to 2**31-1, 0 meaning no
expiry as in Dapr's stores.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from runtime.api.body import field, go_view
from runtime.api.dapr_errors import ERR_MALFORMED_REQUEST, ApiError
from state.store import Concurrency, Consistency, DeleteRequest, SetRequest

ERR_NOT_SUPPORTED_STATE_OPERATION = "ERR_NOT_SUPPORTED_STATE_OPERATION"

_TTL_MAX = 2**31 - 1
CONCURRENCY = {"": Concurrency.LAST_WRITE, **{c.value: c for c in Concurrency}}
CONSISTENCY = {"": Consistency.EVENTUAL, **{c.value: c for c in Consistency}}


_ITEM_FIELDS = frozenset({"key", "value", "etag", "metadata", "options", "contentType"})
_OPTION_FIELDS = frozenset({"concurrency", "consistency"})
_NO_OPTIONS: Mapping[str, Any] = {}


def set_request(item: object, common: Mapping[str, str]) -> SetRequest:
    """One item of a save body (or an upsert's request) as a store request, checked."""
    entry = go_view(json_object(item, "a state item"), _ITEM_FIELDS)
    key = state_key(entry.get("key"))
    etag = entry.get("etag")
    if etag is not None and not isinstance(etag, str):
        raise ApiError(400, ERR_MALFORMED_REQUEST, f"etag of key {key!r} must be a string")
    metadata = string_map(entry.get("metadata"), "metadata")
    if common:
        metadata = {**metadata, **common}
    options = _options(entry.get("options"))
    content_type = entry.get("contentType") or metadata.get("contentType")
    if content_type is not None and not isinstance(content_type, str):
        raise ApiError(400, ERR_MALFORMED_REQUEST, "contentType must be a string")
    return SetRequest(
        key=key,
        value=orjson.dumps(entry.get("value")),
        etag=etag or None,
        concurrency=option(CONCURRENCY, options.get("concurrency"), "concurrency"),
        consistency=option(CONSISTENCY, options.get("consistency"), "consistency"),
        ttl=_ttl(metadata.get("ttlInSeconds")),
        content_type=content_type,
    )


def delete_request(item: object) -> DeleteRequest:
    """A transaction's delete request, checked."""
    entry = go_view(json_object(item, "a delete request"), _ITEM_FIELDS)
    etag = entry.get("etag")
    if etag is not None and not isinstance(etag, str):
        raise ApiError(400, ERR_MALFORMED_REQUEST, "etag must be a string")
    options = _options(entry.get("options"))
    return DeleteRequest(
        key=state_key(entry.get("key")),
        etag=etag or None,
        concurrency=option(CONCURRENCY, options.get("concurrency"), "concurrency"),
        consistency=option(CONSISTENCY, options.get("consistency"), "consistency"),
    )


def _options(value: object) -> Mapping[str, Any]:
    """An item's ``options`` (absent, null or ``{}`` alike)."""
    if not value:
        return _NO_OPTIONS
    return go_view(json_object(value, "options"), _OPTION_FIELDS)


def transaction_step(operation: object, common: Mapping[str, str]) -> SetRequest | DeleteRequest:
    """One ``{"operation", "request"}`` of a transaction."""
    entry = json_object(operation, "a transaction operation")
    name = field(entry, "operation")
    request = field(entry, "request")
    if name == "upsert":
        return set_request(request, common)
    if name == "delete":
        return delete_request(request)
    raise ApiError(400, ERR_NOT_SUPPORTED_STATE_OPERATION, f"operation type {name} not supported")


def json_object(value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ApiError(400, ERR_MALFORMED_REQUEST, f"{what} must be a JSON object")
    return value


def state_key(key: object) -> str:
    if not isinstance(key, str) or not key:
        raise ApiError(400, ERR_MALFORMED_REQUEST, "key is missing or not a non-empty string")
    return key


def string_map(value: object, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ApiError(400, ERR_MALFORMED_REQUEST, f"{what} must be an object of strings")
    return value


def option(choices: Mapping[str, Any], value: object, what: str) -> Any:
    if value is None:
        return choices[""]
    if not isinstance(value, str) or value not in choices:
        expected = ", ".join(repr(c) for c in choices if c)
        raise ApiError(400, ERR_MALFORMED_REQUEST, f"{what}: expected {expected}, got {value!r}")
    return choices[value]


def _ttl(value: str | None) -> int | None:
    if value is None or value == "":
        return None
    try:
        ttl = int(value)
    except ValueError:
        ttl = -2
    if not -1 <= ttl <= _TTL_MAX:
        raise ApiError(
            400,
            ERR_MALFORMED_REQUEST,
            f"incorrect value for metadata ttlInSeconds: {value!r} (an integer >= -1)",
        )
    return -1 if ttl == 0 else ttl  # 0 means no expiry in Dapr's stores, as -1
