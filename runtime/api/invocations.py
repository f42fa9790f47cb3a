"""Async service invocation over HTTP: ``Prefer: respond-async`` and ``/v1.0-alpha1/invocations``.

Beyond Dapr (which has no async invocation).  What a caller sees:

- Any invocation (``/v1.0/invoke/{app}/method/...`` or the ``dapr-app-id`` form) sent with
  ``Prefer: respond-async`` (RFC 7240, any case, among other preferences) answers ``202
  Accepted`` once the request is durably on the bus, with ``Location:
  /v1.0-alpha1/invocations/{id}``, ``Preference-Applied: respond-async``, ``dapr-invocation-id``
  and the body ``{"id": ..., "status": "pending"}``.  The callee need not be running.
- ``Idempotency-Key: K``: the id is derived from the caller app id and K; a resubmission answers
  202 with the same id and its current status and submits nothing.  Reusing a key for another
  app, method or verb answers 409 ``ERR_IDEMPOTENCY_KEY_REUSED``.
- ``dapr-callback: <method>``: the result is POSTed to that method of the caller app once
  recorded (see :mod:`invoke.async_client`).
- ``Prefer``, ``Idempotency-Key`` and ``dapr-callback`` are meant for the sidecar and are not
  passed to the callee; the callee gets ``dapr-invocation-id`` and ``dapr-invocation-attempt``.
- ``GET /v1.0-alpha1/invocations/{id}`` on any sidecar of the caller app: 202 with
  ``{"id", "status": "pending", "attempts"}`` (attempts failed so far) while pending; then the
  recorded response verbatim (status, headers, body) plus ``dapr-invocation-status: completed``
  (the callee answered below 500) or ``failed`` (the attempts ran out: the last 5xx response, or a
  500 ``ERR_DIRECT_INVOKE`` body when the app could not be reached); a cancelled invocation
  answers 200 ``{"id", "status": "cancelled"}`` with ``dapr-invocation-status: cancelled``;
  an unknown (or expired) id 404 ``ERR_INVOCATION_NOT_FOUND``.
- ``DELETE /v1.0-alpha1/invocations/{id}``: cancels a pending invocation (200 with its summary,
  again for one already cancelled); 409 ``ERR_INVOCATION_NOT_PENDING`` if it completed or failed;
  404 if unknown.  The callee skips a cancelled invocation when it shares the result store (one
  machine, or one Redis); otherwise it may still run it, and its result is discarded.
- ``GET /v1.0-alpha1/invocations[?status=pending]``: ``{"invocations": [{id, callee, method,
  verb, status, created, finished, attempts}]}``, oldest first.  Needs a result store with
  queries (the default sqlite one, in-memory, postgres); on others 501 ``ERR_NOT_SUPPORTED``.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from bus.envelope import Headers
from invoke.async_client import STATUS_HEADER, AsyncClient, Submission
from invoke.async_server import INVOCATION_ID_HEADER
from invoke.call import Call, Reply
from invoke.results import InvocationRecord, ListingNotSupported, Status
from runtime.api.dapr_errors import ERR_MALFORMED_REQUEST, ApiError, api_error
from runtime.api.invoke import reply_response

if TYPE_CHECKING:
    from runtime.api.app import SidecarState

ERR_INVOCATION_NOT_FOUND = "ERR_INVOCATION_NOT_FOUND"
ERR_INVOCATION_NOT_PENDING = "ERR_INVOCATION_NOT_PENDING"
ERR_IDEMPOTENCY_KEY_REUSED = "ERR_IDEMPOTENCY_KEY_REUSED"
ERR_INVOCATIONS_UNAVAILABLE = "ERR_INVOCATIONS_UNAVAILABLE"
ERR_NOT_SUPPORTED = "ERR_NOT_SUPPORTED"

LOCATION_PREFIX = "/v1.0-alpha1/invocations/"
SIDECAR_HEADERS = ("prefer", "idempotency-key", "dapr-callback")
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_KEY = re.compile(r"[\x21-\x7e]{1,255}")  # visible ASCII, as Stripe's and the IETF draft's keys
_METHOD = re.compile(r"[\x21-\x7e]{1,1024}")
_JSON = "application/json"

Endpoint = Callable[[Request], Awaitable[Response]]


def _client(state: SidecarState) -> AsyncClient:
    invocations = state.invocations
    if invocations is None:
        raise ApiError(500, ERR_INVOCATIONS_UNAVAILABLE, "async invocation is not running yet")
    client: AsyncClient = invocations.client
    return client


def _header(headers: Headers, name: str, pattern: re.Pattern[str]) -> str | None:
    value = headers.get(name)
    if value is None:
        return None
    value = value.strip()
    if not pattern.fullmatch(value):
        raise ApiError(400, ERR_MALFORMED_REQUEST, f"header {name}: {value[:80]!r} is not valid")
    return value


async def respond_async(client: AsyncClient, call: Call) -> Response:
    """Submit ``call`` as an async invocation; the 202 answer (see the module docstring)."""
    key = _header(call.headers, "idempotency-key", _KEY)
    callback = _header(call.headers, "dapr-callback", _METHOD)
    call = Call(
        app_id=call.app_id,
        method=call.method,
        verb=call.verb,
        query=call.query,
        headers=call.headers.without(SIDECAR_HEADERS),
        body=call.body,
        caller=client.app_id,
        namespace=call.namespace,
    )
    record, created = await client.submit(Submission(call, key, callback))
    if not created and (record.callee, record.method, record.verb) != (
        call.target,
        call.method,
        call.verb,
    ):
        raise ApiError(
            409,
            ERR_IDEMPOTENCY_KEY_REUSED,
            f"idempotency key {key!r} was used for {record.verb} {record.callee}/{record.method}",
        )
    response = _json({"id": record.id, "status": record.status.value}, 202)
    response.headers["location"] = LOCATION_PREFIX + record.id
    response.headers["preference-applied"] = "respond-async"
    response.headers[INVOCATION_ID_HEADER] = record.id
    return response


def _json(body: object, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=_JSON)


def recorded_response(record: InvocationRecord) -> Response:
    """The HTTP answer for a finished invocation: its response verbatim plus its status header."""
    reply = record.response or Reply(204)
    headers = reply.headers.without(["content-length", STATUS_HEADER])
    response = reply_response(Reply(reply.status, headers, reply.body))
    response.raw_headers.append((STATUS_HEADER.encode(), record.status.value.encode()))
    return response


def _invocation_id(request: Request) -> str:
    iid: str = request.path_params["id"]
    if not _ID.fullmatch(iid):
        raise ApiError(400, ERR_MALFORMED_REQUEST, f"{iid[:80]!r} is not an invocation id")
    return iid


def _not_found(iid: str) -> ApiError:
    return ApiError(404, ERR_INVOCATION_NOT_FOUND, f"no invocation {iid} (unknown or expired)")


def _guarded(endpoint: Endpoint) -> Endpoint:
    async def guarded(request: Request) -> Response:
        try:
            return await endpoint(request)
        except ListingNotSupported as exc:
            return ApiError(501, ERR_NOT_SUPPORTED, str(exc)).response()
        except Exception as exc:
            return api_error(exc).response()

    return guarded


def routes(state: SidecarState) -> list[BaseRoute]:
    """The routes of ``/v1.0-alpha1/invocations``."""

    async def get_one(request: Request) -> Response:
        iid = _invocation_id(request)
        record = await _client(state).get(iid)
        if record is None:
            raise _not_found(iid)
        if record.status is Status.PENDING:
            body = {"id": iid, "status": "pending", "attempts": record.attempts}
            response = _json(body, 202)
            response.headers["location"] = LOCATION_PREFIX + iid
            return response
        if record.status is Status.CANCELLED:
            response = _json({"id": iid, "status": "cancelled"})
            response.headers[STATUS_HEADER] = "cancelled"
            return response
        return recorded_response(record)

    async def cancel(request: Request) -> Response:
        iid = _invocation_id(request)
        record = await _client(state).cancel(iid)
        if record is None:
            raise _not_found(iid)
        if record.status is not Status.CANCELLED:
            raise ApiError(
                409, ERR_INVOCATION_NOT_PENDING, f"invocation {iid} is {record.status.value}"
            )
        return _json(record.summary())

    async def list_all(request: Request) -> Response:
        wanted = request.query_params.get("status")
        if wanted is not None and wanted not in {s.value for s in Status}:
            raise ApiError(400, ERR_MALFORMED_REQUEST, f"status {wanted[:40]!r} is not one of ours")
        records = await _client(state).list()
        listed = [r.summary() for r in records if wanted is None or r.status.value == wanted]
        return _json({"invocations": listed})

    return [
        Route("/v1.0-alpha1/invocations", _guarded(list_all), methods=["GET"]),
        Route(LOCATION_PREFIX + "{id}", _guarded(get_one), methods=["GET"]),
        Route(LOCATION_PREFIX + "{id}", _guarded(cancel), methods=["DELETE"]),
    ]
