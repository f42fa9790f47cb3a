"""The publish API: single publishes as a pure ASGI endpoint (the hot path), and bulk publishes.

``POST|PUT /v1.0/publish/{pubsub}/{topic...}``: every publish passes here, so it skips what the
Starlette router and its middleware stack cost per request (a third of the sidecar's CPU per
publish in a profile): one scan of the headers, the query parsed only when there is one, the body
read straight from ``receive``.  Everything else
goes on to the Starlette app, where :func:`bulk_routes` serve ``/v1.0-alpha1/publish/bulk/...``
(and ``/v1.0/publish/bulk/...``): 204, or 500 with ``failedEntries``.  Errors take the same path as
in every other route: :func:`runtime.api.dapr_errors.api_error`.  Building the messages and
coalescing concurrent publishes is :mod:`runtime.pubsub.publisher`'s.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from bus.errors import InvalidArgument
from bus.message import validate_topic
from runtime.api.body import parse_json
from runtime.api.dapr_errors import (
    ERR_PUBSUB_EVENTS_SER,
    ERR_PUBSUB_PUBLISH_MESSAGE,
    ERR_TOPIC_NAME_EMPTY,
    ApiError,
    api_error,
    guarded,
)
from runtime.api.guard import ASGIApp, Receive, Scope, Send
from runtime.pubsub.components import PubSubs
from runtime.pubsub.publisher import PublishContext, make_message, parse_bulk

if TYPE_CHECKING:
    from runtime.api.app import SidecarState

PREFIX = "/v1.0/publish/"
_BULK_PREFIX = "/v1.0/publish/bulk/"
_METHODS = frozenset({"POST", "PUT"})
_WANTED = {b"content-type": 0, b"traceparent": 1, b"tracestate": 2}
_JSON_HEADERS = [(b"content-type", b"application/json")]
_NO_CONTENT = Response(status_code=204)


def split_target(rest: str, pubsubs: PubSubs) -> tuple[str, str]:
    """``{pubsub}/{topic...}`` checked as Dapr does: pubsub known, topic non-empty and valid,
    and allowed by the component's publishing scopes."""
    pubsub, _, topic = rest.partition("/")
    pubsubs.get(pubsub)  # 404 for an empty or unknown pubsub name
    if not topic:
        raise ApiError(404, ERR_TOPIC_NAME_EMPTY, "topic is empty")
    validate_topic(topic)
    pubsubs.check_publish(pubsub, topic)
    return pubsub, topic


def query_metadata(query_string: bytes) -> dict[str, str]:
    """The ``metadata.<key>=<value>`` query parameters as ``{key: value}``."""
    if not query_string:
        return {}
    pairs = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
    return {key[9:]: value for key, value in pairs if key.startswith("metadata.")}


async def read_body(receive: Receive) -> bytes:
    """The whole request body (the body limit is enforced by the ``receive`` it is given)."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


class PublishEndpoint:
    """Serves single publishes itself and hands every other request to ``app``."""

    def __init__(self, app: ASGIApp, *, pubsubs: PubSubs, app_id: str) -> None:
        self._app = app
        self._pubsubs = pubsubs
        self._app_id = app_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if (
            path.startswith(PREFIX)
            and not path.startswith(_BULK_PREFIX)
            and scope["type"] == "http"
            and scope["method"] in _METHODS
        ):
            await self._publish(scope, receive, send)
        else:
            await self._app(scope, receive, send)

    async def _publish(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._publish_one(scope, receive)
        except Exception as exc:
            error = api_error(exc, failure=ERR_PUBSUB_PUBLISH_MESSAGE)
            body = error.body()
            headers = [*_JSON_HEADERS, (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": error.status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def _publish_one(self, scope: Scope, receive: Receive) -> None:
        pubsub, topic = split_target(scope["path"][len(PREFIX) :], self._pubsubs)
        found: list[str | None] = [None, None, None]
        for key, value in scope["headers"]:
            index = _WANTED.get(key)
            if index is not None:
                found[index] = value.decode("latin-1")
        content_type, traceparent, tracestate = found
        context = PublishContext(pubsub, topic, self._app_id, traceparent, tracestate)
        body = await read_body(receive)
        message = make_message(body, content_type, query_metadata(scope["query_string"]), context)
        await self._pubsubs.publisher(pubsub).publish(topic, (message,))


def bulk_routes(state: SidecarState) -> list[BaseRoute]:
    """``POST|PUT /v1.0-alpha1/publish/bulk/...`` and ``/v1.0/publish/bulk/...``."""
    bulk = guarded(ERR_PUBSUB_PUBLISH_MESSAGE)(_BulkPublish(state))
    return [
        Route("/v1.0/publish/bulk/{rest:path}", bulk, methods=["POST", "PUT"]),
        Route("/v1.0-alpha1/publish/bulk/{rest:path}", bulk, methods=["POST", "PUT"]),
    ]


class _BulkPublish:
    """Bulk publishes, through the router (they are not the hot path)."""

    def __init__(self, state: SidecarState) -> None:
        self.state = state

    async def __call__(self, request: Request) -> Response:
        """``POST /v1.0-alpha1/publish/bulk/{pubsub}/{topic}``: 204, or 500 with failedEntries."""
        pubsub, topic = split_target(request.path_params["rest"], self.state.pubsubs)
        payload = parse_json(await request.body(), what="the bulk publish body")  # 400 if bad
        common = query_metadata(request.scope["query_string"])
        headers = request.headers
        context = PublishContext(
            pubsubname=pubsub,
            topic=topic,
            source=self.state.app_id,
            traceparent=headers.get("traceparent"),
            tracestate=headers.get("tracestate"),
        )
        try:
            entries = parse_bulk(payload)
            now = datetime.now(UTC)
            messages = [
                make_message(
                    e.data,
                    e.content_type,
                    {**common, **e.metadata},
                    context,
                    now=now,
                    json_checked=True,  # parse_bulk serialized JSON events itself
                )
                for e in entries
            ]
        except InvalidArgument as exc:
            raise ApiError(400, ERR_PUBSUB_EVENTS_SER, str(exc)) from exc
        try:
            await self.state.pubsubs.publisher(pubsub).publish(topic, messages)
        except Exception as exc:
            error = api_error(exc, failure=ERR_PUBSUB_PUBLISH_MESSAGE)
            failed = [{"entryId": e.entry_id, "error": error.message} for e in entries]
            raise ApiError(
                500, ERR_PUBSUB_PUBLISH_MESSAGE, error.message, {"failedEntries": failed}
            ) from exc
        return _NO_CONTENT
