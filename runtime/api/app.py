"""The sidecar's HTTP API (Dapr v1.0 paths, bodies and status codes) as a Starlette app.

Routes: bulk publish, health, metadata, shutdown; single publishes, the hot path, are served
in front of the router by :mod:`runtime.api.publish`.  Every route answers errors through
:func:`runtime.api.dapr_errors.api_error`, so an exception never escapes as a bare 500; the
token and the body limit are checked before any route by :class:`runtime.api.guard.ApiGuard`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from bus.broker import BaseBroker
from bus.errors import InvalidArgument
from components.specs import SubscriptionSpec
from invoke.client import Invoker
from runtime.api import invocations as invocations_api
from runtime.api import invoke as invoke_api
from runtime.api import openapi as openapi_api
from runtime.api import state as state_api
from runtime.api.body import parse_json
from runtime.api.dapr_errors import (
    ERR_HEALTH_APPID_NOT_MATCH,
    ERR_HEALTH_NOT_READY,
    ERR_INTERNAL,
    ERR_MALFORMED_REQUEST,
    ERR_OUTBOUND_HEALTH_NOT_READY,
    ERR_PUBSUB_EVENTS_SER,
    ERR_PUBSUB_PUBLISH_MESSAGE,
    ApiError,
    api_error,
)
from runtime.api.guard import ApiGuard
from runtime.api.publish import PublishEndpoint, query_metadata, split_target
from runtime.channel import AppChannel
from runtime.pubsub.components import PubSubs
from runtime.pubsub.publisher import PublishContext, make_message, parse_bulk
from state.service import StateClient

if TYPE_CHECKING:
    from runtime.async_invocations import Invocations

log = logging.getLogger("omnibus.runtime")

RUNTIME_VERSION = "omnibus-0.1.0"
_JSON = "application/json"
_NO_CONTENT = Response(status_code=204)

Endpoint = Callable[[Request], Awaitable[Response]]


@dataclass(slots=True)
class SidecarState:
    """What the API reads about the running sidecar; the sidecar updates it as it starts."""

    app_id: str
    pubsubs: PubSubs
    app_port: int | None = None
    app_channel_address: str = "127.0.0.1"
    app_max_concurrency: int = -1
    subscriptions: list[SubscriptionSpec] = field(default_factory=list)
    extended: dict[str, str] = field(default_factory=dict)  # PUT /v1.0/metadata/{key}
    api_ready: bool = False
    app_ready: bool = False
    request_shutdown: Callable[[], None] = lambda: None
    instance: str = ""
    bus: BaseBroker | None = None  # the system bus (runtime.system_bus), connected at start
    channel: AppChannel | None = None  # the app channel, once the app port is up
    invoker: Invoker | None = None  # service invocation (runtime.api.invoke)
    invocations: Invocations | None = None  # async invocation (runtime.async_invocations)
    states: StateClient | None = None  # the state stores (runtime.states), set at start

    @property
    def outbound_ready(self) -> bool:
        """Components connected and the API serving: the app may call the sidecar."""
        return self.pubsubs.connected and self.api_ready

    @property
    def ready(self) -> bool:
        """Outbound ready and, if there is an app, its channel up and subscriptions started."""
        return self.outbound_ready and (self.app_port is None or self.app_ready)


def _guarded(failure: str) -> Callable[[Endpoint], Endpoint]:
    """Answer every exception of the route with Dapr's error body; ``failure`` is its 500 code."""

    def wrap(endpoint: Endpoint) -> Endpoint:
        async def guarded(request: Request) -> Response:
            try:
                return await endpoint(request)
            except Exception as exc:
                return api_error(exc, failure=failure).response()

        return guarded

    return wrap


def request_metadata(request: Request) -> dict[str, str]:
    """The ``metadata.<key>=<value>`` query parameters as ``{key: value}``."""
    return query_metadata(request.scope["query_string"])


class SidecarApi:
    """The route handlers, bound to one sidecar's state."""

    def __init__(self, state: SidecarState) -> None:
        self.state = state

    def routes(self) -> list[Route]:
        """Dapr's paths for the pub/sub, health, metadata and shutdown APIs."""
        publish = _guarded(ERR_PUBSUB_PUBLISH_MESSAGE)
        guarded = _guarded(ERR_INTERNAL)
        bulk = publish(self.bulk_publish)
        return [
            Route("/v1.0/publish/bulk/{rest:path}", bulk, methods=["POST", "PUT"]),
            Route("/v1.0-alpha1/publish/bulk/{rest:path}", bulk, methods=["POST", "PUT"]),
            Route("/v1.0/healthz", guarded(self.healthz), methods=["GET"]),
            Route("/v1.0/healthz/outbound", guarded(self.healthz_outbound), methods=["GET"]),
            Route("/v1.0/metadata", guarded(self.metadata), methods=["GET"]),
            Route("/v1.0/metadata/{key}", guarded(self.set_metadata), methods=["PUT"]),
            Route("/v1.0/shutdown", guarded(self.shutdown), methods=["POST"]),
        ]

    def _target(self, request: Request) -> tuple[str, str]:
        return split_target(request.path_params["rest"], self.state.pubsubs)

    async def bulk_publish(self, request: Request) -> Response:
        """``POST /v1.0-alpha1/publish/bulk/{pubsub}/{topic}``: 204, or 500 with failedEntries."""
        pubsub, topic = self._target(request)
        payload = parse_json(await request.body(), what="the bulk publish body")  # 400 if bad
        common = request_metadata(request)
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

    async def healthz(self, request: Request) -> Response:
        """``GET /v1.0/healthz``: 204 once components, API and app channel are ready."""
        app_id = request.query_params.get("appid")
        if app_id is not None and app_id != self.state.app_id:
            raise ApiError(500, ERR_HEALTH_APPID_NOT_MATCH, "app id does not match")
        if not self.state.ready:
            raise ApiError(500, ERR_HEALTH_NOT_READY, "omnibus is not ready")
        return _NO_CONTENT

    async def healthz_outbound(self, request: Request) -> Response:
        """``GET /v1.0/healthz/outbound``: 204 once components are connected."""
        if not self.state.outbound_ready:
            raise ApiError(500, ERR_OUTBOUND_HEALTH_NOT_READY, "omnibus outbound is not ready")
        return _NO_CONTENT

    async def metadata(self, request: Request) -> Response:
        """``GET /v1.0/metadata``: app id, components, subscriptions, app connection."""
        state = self.state
        body: dict[str, Any] = {
            "id": state.app_id,
            "runtimeVersion": RUNTIME_VERSION,
            "enabledFeatures": [],
            "components": [
                {"name": c.name, "type": c.type, "version": "v1", "capabilities": c.capabilities}
                for c in state.pubsubs
            ]
            + state_api.metadata_components(state),
            "subscriptions": [subscription_metadata(s) for s in state.subscriptions],
            "extended": state.extended,
            "appConnectionProperties": _app_connection(state),
        }
        return Response(orjson.dumps(body), media_type=_JSON)

    async def set_metadata(self, request: Request) -> Response:
        """``PUT /v1.0/metadata/{key}``: a text value shown under ``extended`` (in memory)."""
        body = await request.body()
        try:
            value = body.decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(400, ERR_MALFORMED_REQUEST, "the value must be UTF-8 text") from None
        self.state.extended[request.path_params["key"]] = value
        return _NO_CONTENT

    async def shutdown(self, request: Request) -> Response:
        """``POST /v1.0/shutdown``: answer, then shut down in the stated order."""
        log.info("shutdown requested through the API")
        self.state.request_shutdown()
        return _NO_CONTENT


def subscription_metadata(spec: SubscriptionSpec) -> dict[str, Any]:
    """A subscription as ``/v1.0/metadata`` shows it: the default route is a rule without match."""
    rules = [{"match": r.match, "path": r.path} for r in spec.routes.rules]
    if spec.routes.default:
        rules.append({"match": "", "path": spec.routes.default})
    return {
        "pubsubname": spec.pubsubname,
        "topic": spec.topic,
        "metadata": dict(spec.metadata),
        "rules": rules,
        "deadLetterTopic": spec.dead_letter_topic or "",
        "type": spec.type,
    }


def _app_connection(state: SidecarState) -> Mapping[str, Any]:
    if state.app_port is None:
        return {}
    return {
        "port": state.app_port,
        "protocol": "http",
        "channelAddress": state.app_channel_address,
        "maxConcurrency": state.app_max_concurrency,
    }


def build_app(
    state: SidecarState,
    *,
    api_token: str | None = None,
    max_body_size: int = 4 * 1024 * 1024,
    lifespan: Any = None,
) -> ApiGuard:
    """The ASGI app of one sidecar: the routes behind the token and body-limit guard.

    Single publishes are served by :class:`~runtime.api.publish.PublishEndpoint` before the
    router; everything else by Starlette.
    """
    routes: list[BaseRoute] = [*SidecarApi(state).routes()]
    routes += state_api.routes(state)
    routes += invocations_api.routes(state)
    routes += openapi_api.routes(state)  # GET /v1.0/openapi.json
    routes += invoke_api.routes(state)  # last: the dapr-app-id form takes any path
    app = Starlette(routes=routes, lifespan=lifespan)
    endpoint = PublishEndpoint(app, pubsubs=state.pubsubs, app_id=state.app_id)
    return ApiGuard(endpoint, api_token=api_token, max_body_size=max_body_size)
