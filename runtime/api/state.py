"""Dapr's state HTTP API: save, get, delete, bulk get, transactions and queries.

Paths, bodies, statuses and codes as Dapr's (``pkg/api/http/http.go``):

    POST|PUT /v1.0/state/{store}                   save ``[{key, value, etag, metadata, options}]``
    GET      /v1.0/state/{store}/{key}             raw value, ``ETag``; 204 when absent
    DELETE   /v1.0/state/{store}/{key}             ``If-Match``, ``concurrency``/``consistency``
    POST|PUT /v1.0/state/{store}/bulk              ``{keys, parallelism}`` -> ``[{key, data, ...}]``
    POST|PUT /v1.0/state/{store}/transaction       ``{operations: [{operation, request}]}``
    POST|PUT /v1.0-alpha1/state/{store}/query      Dapr's query language

A JSON value is stored as its JSON text (``"abc"`` is stored as ``"\\"abc\\""`` and read back with
its quotes); a GET answers ``application/json``.  Query ``metadata.*`` parameters are merged into
each saved item's metadata (the query wins, as in Dapr); ``ttlInSeconds`` there sets a TTL (-1 =
never, 0 = none, as Dapr's stores treat it).  Bodies are read by :mod:`runtime.api.body` (Go's
case-insensitive field names).  Keys in paths are percent-decoded from the raw path and must be
UTF-8.  Where omnibus answers differently from Dapr, on purpose: an unknown ``concurrency`` or
``consistency``, a bad ``ttlInSeconds`` and non-UTF-8 keys are 400 ``ERR_MALFORMED_REQUEST``
(Dapr lets the store fail them as 500s); a store whose ``scopes`` exclude the app is unknown.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from bus.errors import InvalidArgument
from runtime.api.body import field, parse_json
from runtime.api.dapr_errors import ERR_MALFORMED_REQUEST, ApiError, api_error
from runtime.api.publish import query_metadata, read_body
from runtime.api.state_requests import (
    CONCURRENCY,
    CONSISTENCY,
    json_object,
    option,
    set_request,
    state_key,
    string_map,
    transaction_step,
)
from state.errors import BulkError, ETagInvalid, ETagMismatch, NotSupported, StateError
from state.service import StateClient
from state.store import BulkItem, DeleteRequest, Feature, Item
from state.wire import BulkGet, Delete, Get, Query, Result, Save, StoreNotFound, Transact
from state.wire import Request as StateRequest

if TYPE_CHECKING:
    from runtime.api.app import SidecarState

ERR_STATE_STORE_NOT_FOUND = "ERR_STATE_STORE_NOT_FOUND"
ERR_STATE_STORE_NOT_CONFIGURED = "ERR_STATE_STORE_NOT_CONFIGURED"
ERR_STATE_STORE_NOT_SUPPORTED = "ERR_STATE_STORE_NOT_SUPPORTED"
ERR_STATE_SAVE = "ERR_STATE_SAVE"
ERR_STATE_GET = "ERR_STATE_GET"
ERR_STATE_DELETE = "ERR_STATE_DELETE"
ERR_STATE_BULK_GET = "ERR_STATE_BULK_GET"
ERR_STATE_TRANSACTION = "ERR_STATE_TRANSACTION"
ERR_STATE_QUERY = "ERR_STATE_QUERY"

_JSON = "application/json"
_NO_CONTENT = Response(status_code=204)


_PREFIX = "/v1.0/state/"


def routes(state: SidecarState) -> list[BaseRoute]:
    """Dapr's state routes, bound to one sidecar."""
    api = StateApi(state)
    return [
        Route("/v1.0/state/{store}", api.save, methods=["POST", "PUT"]),
        Route("/v1.0/state/{store}/bulk", api.bulk_get, methods=["POST", "PUT"]),
        Route("/v1.0/state/{store}/transaction", api.transaction, methods=["POST", "PUT"]),
        Route("/v1.0/state/{store}/{key:path}", api.get, methods=["GET"]),
        Route("/v1.0/state/{store}/{key:path}", api.delete, methods=["DELETE"]),
        Route("/v1.0-alpha1/state/{store}/query", api.query, methods=["POST", "PUT"]),
    ]


def metadata_components(state: SidecarState) -> list[dict[str, Any]]:
    """The state stores this sidecar serves, as ``/v1.0/metadata`` lists components."""
    if state.states is None:
        return []
    return [
        {
            "name": s.name,
            "type": s.config.type,
            "version": "v1",
            "capabilities": sorted(f.value for f in s.features),
        }
        for s in state.states.services.values()
    ]


def state_error(exc: BaseException, failure: str) -> ApiError:
    """Dapr's answer for an error of a state operation whose 500 code is ``failure``."""
    if isinstance(exc, BulkError) and exc.errors:
        errors: list[StateError] = [e for _, e in exc.errors]
        etag_errors = [e for e in errors if isinstance(e, ETagMismatch | ETagInvalid)]
        return state_error((etag_errors or errors)[0], failure)
    if isinstance(exc, StoreNotFound):
        return ApiError(400, ERR_STATE_STORE_NOT_FOUND, str(exc))
    if isinstance(exc, InvalidArgument):  # bad keys, bad queries
        return ApiError(400, ERR_MALFORMED_REQUEST, str(exc))
    if isinstance(exc, NotSupported):
        return ApiError(500, ERR_STATE_STORE_NOT_SUPPORTED, str(exc))
    if failure in (ERR_STATE_SAVE, ERR_STATE_DELETE):
        if isinstance(exc, ETagMismatch):
            return ApiError(409, failure, f"possible etag mismatch. error from state store: {exc}")
        if isinstance(exc, ETagInvalid):
            return ApiError(400, failure, f"invalid etag value: {exc}")
    if isinstance(exc, StateError):
        return ApiError(500, failure, str(exc))
    return api_error(exc, failure=failure)


class StateEndpoint:
    """Serves the three hot state calls (save, get and delete of one key) straight from their
    handlers, past Starlette's middleware and router; every other request goes to ``app``.

    The requests taken are exactly those the router would give the same handler: ``POST|PUT
    /v1.0/state/{store}``, ``GET`` and ``DELETE /v1.0/state/{store}/{key...}`` with a non-empty
    store segment.  Bulk gets and transactions are ``POST``s with more segments, so they stay
    with the router, as does ``HEAD``.  The handlers answer every failure with Dapr's error
    body themselves, so skipping the middleware changes no answer.
    """

    def __init__(self, app: ASGIApp, state: SidecarState) -> None:
        self._app = app
        api = StateApi(state)
        self._save = api.save
        self._get = api.get
        self._delete = api.delete

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = self._handler(scope) if scope["type"] == "http" else None
        if handler is None:
            await self._app(scope, receive, send)
            return
        response = await handler(Request(scope, receive))
        await response(scope, receive, send)

    def _handler(self, scope: Scope) -> Any:
        path: str = scope["path"]
        if not path.startswith(_PREFIX):
            return None
        store, slash, key = path[len(_PREFIX) :].partition("/")
        if not store:
            return None
        method = scope["method"]
        if not slash:
            handler = self._save if method in ("POST", "PUT") else None
        elif method == "GET":
            handler = self._get
        else:
            handler = self._delete if method == "DELETE" else None
        if handler is not None:  # the router's parameters, for a path that decodes to more "/"
            scope["path_params"] = {"store": store, "key": key} if slash else {"store": store}
        return handler


class StateApi:
    """The state route handlers of one sidecar."""

    def __init__(self, state: SidecarState) -> None:
        self.state = state

    async def _run(self, store: str, request: StateRequest, failure: str) -> Result:
        client: StateClient | None = self.state.states
        if client is None:
            raise ApiError(500, ERR_STATE_STORE_NOT_CONFIGURED, "state stores are not started")
        try:
            return await client.call(store, request)
        except Exception as exc:
            raise state_error(exc, failure) from exc

    async def save(self, request: Request) -> Response:
        """Save an array of items: 204."""
        return await _answer(self._save, request, ERR_STATE_SAVE)

    async def _save(self, request: Request) -> Response:
        store = _store(request)
        payload = parse_json(await read_body(request.receive))  # Request.body's stream costs more
        if not isinstance(payload, list):
            raise ApiError(400, ERR_MALFORMED_REQUEST, "the body must be a JSON array of items")
        common = query_metadata(request.scope["query_string"])
        items = tuple(set_request(item, common) for item in payload)
        await self._run(store, Save(items), ERR_STATE_SAVE)
        return _NO_CONTENT

    async def get(self, request: Request) -> Response:
        """The raw value with its ``ETag``; 204 when absent."""
        return await _answer(self._get, request, ERR_STATE_GET)

    async def _get(self, request: Request) -> Response:
        store, key = _store_and_key(request)
        if request.scope["query_string"]:  # parsing an empty one is a sixth of a get's work
            option(CONSISTENCY, request.query_params.get("consistency"), "consistency")
        item = await self._run(store, Get(key), ERR_STATE_GET)
        if not isinstance(item, Item):
            return _NO_CONTENT
        headers = {}
        if item.etag:
            headers["ETag"] = item.etag
        if item.expires_at is not None:
            headers["metadata.ttlExpireTime"] = rfc3339(item.expires_at)
        return Response(item.value, headers=headers, media_type=_JSON)

    async def delete(self, request: Request) -> Response:
        """Delete one key (``If-Match`` etag): 204."""
        return await _answer(self._delete, request, ERR_STATE_DELETE)

    async def _delete(self, request: Request) -> Response:
        store, key = _store_and_key(request)
        params = request.query_params
        delete = DeleteRequest(
            key=key,
            etag=request.headers.get("if-match") or None,
            concurrency=option(CONCURRENCY, params.get("concurrency"), "concurrency"),
            consistency=option(CONSISTENCY, params.get("consistency"), "consistency"),
        )
        await self._run(store, Delete(delete), ERR_STATE_DELETE)
        return _NO_CONTENT

    async def bulk_get(self, request: Request) -> Response:
        """``[{key, data, etag, metadata, error}]`` in the order of ``keys``."""
        return await _answer(self._bulk_get, request, ERR_STATE_BULK_GET)

    async def _bulk_get(self, request: Request) -> Response:
        store = _store(request)
        payload = json_object(parse_json(await request.body()), "the body")
        keys = field(payload, "keys")
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise ApiError(400, ERR_MALFORMED_REQUEST, "keys must be an array of strings")
        parallelism = field(payload, "parallelism")
        if parallelism is not None and (type(parallelism) is not int or parallelism < 0):
            raise ApiError(400, ERR_MALFORMED_REQUEST, "parallelism must be a whole number")
        string_map(field(payload, "metadata"), "metadata")
        found = await self._run(store, BulkGet(tuple(keys)), ERR_STATE_BULK_GET)
        entries = found if isinstance(found, list) else []
        return Response(orjson.dumps([_bulk_entry(e) for e in entries]), media_type=_JSON)

    async def transaction(self, request: Request) -> Response:
        """Apply upserts and deletes atomically, in order: 204."""
        return await _answer(self._transaction, request, ERR_STATE_TRANSACTION)

    async def _transaction(self, request: Request) -> Response:
        store = _store(request)
        self._check_local(store, Feature.TRANSACTIONAL, "transactions")
        payload = json_object(parse_json(await request.body()), "the body")
        operations = field(payload, "operations")
        if operations is not None and not isinstance(operations, list):
            raise ApiError(400, ERR_MALFORMED_REQUEST, "operations must be an array")
        string_map(field(payload, "metadata"), "metadata")
        # as Dapr: the query's metadata.* is merged into each operation's (and wins)
        common = query_metadata(request.scope["query_string"])
        steps = tuple(transaction_step(op, common) for op in operations or [])
        await self._run(store, Transact(steps), ERR_STATE_TRANSACTION)
        return _NO_CONTENT

    def _check_local(self, store: str, feature: Feature, what: str) -> None:
        """Dapr refuses an operation the store lacks before reading the body; so do we, when the
        store is this sidecar's (a remote server checks it on its side)."""
        service = self.state.states.local(store) if self.state.states is not None else None
        if service is not None and feature not in service.features:
            raise ApiError(
                500, ERR_STATE_STORE_NOT_SUPPORTED, f"state store {store} doesn't support {what}"
            )

    async def query(self, request: Request) -> Response:
        """``{results: [{key, data, etag}], token}``; 204 when nothing matches."""
        return await _answer(self._query, request, ERR_STATE_QUERY)

    async def _query(self, request: Request) -> Response:
        store = _store(request)
        self._check_local(store, Feature.QUERY_API, "the query API")
        payload = json_object(parse_json(await request.body()), "the query")
        result = await self._run(store, Query(payload), ERR_STATE_QUERY)
        if result is None or isinstance(result, Item | list) or not result.results:
            return _NO_CONTENT
        body: dict[str, Any] = {"results": [_query_entry(i) for i in result.results]}
        if result.token:
            body["token"] = result.token
        return Response(orjson.dumps(body), media_type=_JSON)


async def _answer(handler: Any, request: Request, failure: str) -> Response:
    try:
        response: Response = await handler(request)
        return response
    except Exception as exc:
        return state_error(exc, failure).response()


def _segments(request: Request) -> list[str]:
    """The raw path's segments, percent-decoded and UTF-8 checked."""
    raw = request.scope.get("raw_path") or request.scope["path"].encode("utf-8")
    path: bytes = raw.split(b"?", 1)[0]
    try:
        if b"%" not in path:
            return path.decode("utf-8").split("/")
        return [unquote_to_bytes(s).decode("utf-8") for s in path.split(b"/")]
    except UnicodeDecodeError:
        raise ApiError(400, ERR_MALFORMED_REQUEST, "the store name and key must be UTF-8") from None


def _store(request: Request) -> str:
    segments = _segments(request)
    return segments[3] if len(segments) > 3 else str(request.path_params["store"])


def _store_and_key(request: Request) -> tuple[str, str]:
    segments = _segments(request)
    if len(segments) < 5:
        return str(request.path_params["store"]), str(request.path_params["key"])
    return segments[3], state_key("/".join(segments[4:]))


def rfc3339(moment: datetime) -> str:
    """``2026-12-02T06:00:00Z``, as Dapr writes ``ttlExpireTime``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _data(value: bytes) -> Any:
    """A stored value as it goes into a JSON answer: the JSON itself, else a string."""
    try:
        orjson.loads(value)
    except orjson.JSONDecodeError:
        return value.decode("utf-8", "replace")
    return orjson.Fragment(value)


def _bulk_entry(entry: BulkItem) -> dict[str, Any]:
    out: dict[str, Any] = {"key": entry.key}
    if entry.item is not None:
        out["data"] = _data(entry.item.value)
        if entry.item.etag:
            out["etag"] = entry.item.etag
        if entry.item.expires_at is not None:
            out["metadata"] = {"ttlExpireTime": rfc3339(entry.item.expires_at)}
    if entry.error:
        out["error"] = entry.error
    return out


def _query_entry(item: Item) -> dict[str, Any]:
    out: dict[str, Any] = {"key": item.key, "data": _data(item.value)}
    if item.etag:
        out["etag"] = item.etag
    return out
