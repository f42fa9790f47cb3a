"""Dapr's error answers, and the one place where omnibus's exception tree becomes them.

Every error answer has Dapr's body ``{"errorCode": "ERR_...", "message": "..."}`` and Dapr's status.
Route handlers raise :class:`ApiError` for what they detect themselves; anything else that escapes
(one of :mod:`bus.errors`, or a bug) goes through :func:`api_error`, so a broker failure, a bad
name or an unexpected exception always ends as a well-formed answer and the sidecar keeps serving.

Where omnibus chooses differently from Dapr, on purpose:

- a body over ``--max-body-size`` answers 413 ``ERR_BODY_TOO_LARGE`` (Dapr fails the read);
- an invalid topic name answers 400 ``ERR_MALFORMED_REQUEST`` (Dapr hands any name to the broker).

As in Dapr: bad ``metadata.*`` values (``ttlInSeconds``, ``rawPayload``) answer 400
``ERR_PUBSUB_REQUEST_METADATA``; a caller's CloudEvent that is not a JSON object answers 500
``ERR_PUBSUB_CLOUD_EVENTS_SER``; bad bulk entries answer 400 ``ERR_PUBSUB_EVENTS_SER``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType

import orjson
from starlette.requests import Request
from starlette.responses import Response

from bus.errors import InvalidArgument, OmnibusError

log = logging.getLogger("omnibus.runtime")

ERR_MALFORMED_REQUEST = "ERR_MALFORMED_REQUEST"
ERR_BODY_TOO_LARGE = "ERR_BODY_TOO_LARGE"
ERR_PUBSUB_NOT_FOUND = "ERR_PUBSUB_NOT_FOUND"
ERR_PUBSUB_FORBIDDEN = "ERR_PUBSUB_FORBIDDEN"
ERR_PUBSUB_EMPTY = "ERR_PUBSUB_EMPTY"
ERR_TOPIC_NAME_EMPTY = "ERR_TOPIC_NAME_EMPTY"
ERR_PUBSUB_PUBLISH_MESSAGE = "ERR_PUBSUB_PUBLISH_MESSAGE"
ERR_PUBSUB_CLOUD_EVENTS_SER = "ERR_PUBSUB_CLOUD_EVENTS_SER"
ERR_PUBSUB_REQUEST_METADATA = "ERR_PUBSUB_REQUEST_METADATA"
ERR_PUBSUB_EVENTS_SER = "ERR_PUBSUB_EVENTS_SER"
ERR_HEALTH_NOT_READY = "ERR_HEALTH_NOT_READY"
ERR_HEALTH_APPID_NOT_MATCH = "ERR_HEALTH_APPID_NOT_MATCH"
ERR_OUTBOUND_HEALTH_NOT_READY = "ERR_OUTBOUND_HEALTH_NOT_READY"
ERR_METADATA_SET = "ERR_METADATA_SET"
ERR_NOT_FOUND = "ERR_NOT_FOUND"
ERR_INTERNAL = "ERR_INTERNAL"

_NO_EXTRA: Mapping[str, object] = MappingProxyType({})


class RequestMetadataError(InvalidArgument):
    """A ``metadata.*`` value of a request cannot be used (not a number, not a boolean)."""


class CloudEventError(InvalidArgument):
    """A caller-supplied CloudEvent cannot be read or completed."""


class ApiError(Exception):
    """An error answer of the HTTP API: status, Dapr error code, message, extra body fields."""

    def __init__(
        self, status: int, code: str, message: str, extra: Mapping[str, object] = _NO_EXTRA
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra

    def body(self) -> bytes:
        """The JSON body Dapr sends for this error."""
        return orjson.dumps({"errorCode": self.code, "message": self.message, **self.extra})

    def response(self) -> Response:
        """The complete answer."""
        return Response(self.body(), status_code=self.status, media_type="application/json")


def api_error(exc: BaseException, *, failure: str = ERR_INTERNAL) -> ApiError:
    """Map any exception to the answer Dapr would give; ``failure`` is the route's 500 code."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, RequestMetadataError):
        return ApiError(400, ERR_PUBSUB_REQUEST_METADATA, str(exc))
    if isinstance(exc, CloudEventError):
        return ApiError(500, ERR_PUBSUB_CLOUD_EVENTS_SER, str(exc))
    if isinstance(exc, InvalidArgument):  # InvalidName included: a bad topic, app id, key
        return ApiError(400, ERR_MALFORMED_REQUEST, str(exc))
    if isinstance(exc, OmnibusError):  # broker failures, request/reply failures, config
        return ApiError(500, failure, f"{type(exc).__name__}: {exc}")
    log.error("unexpected error while serving a request", exc_info=exc)
    return ApiError(500, failure, f"internal error ({type(exc).__name__})")


Endpoint = Callable[[Request], Awaitable[Response]]


def guarded(failure: str = ERR_INTERNAL) -> Callable[[Endpoint], Endpoint]:
    """Answer every exception of a route with Dapr's error body; ``failure`` is its 500 code."""

    def wrap(endpoint: Endpoint) -> Endpoint:
        async def guarded_endpoint(request: Request) -> Response:
            try:
                return await endpoint(request)
            except Exception as exc:
                return api_error(exc, failure=failure).response()

        return guarded_endpoint

    return wrap
