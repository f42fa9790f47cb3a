"""Health, metadata and shutdown: ``/v1.0/healthz``, ``/v1.0/metadata``, ``/v1.0/shutdown``."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from components.specs import SubscriptionSpec
from runtime.api import state as state_api
from runtime.api.dapr_errors import (
    ERR_HEALTH_APPID_NOT_MATCH,
    ERR_HEALTH_NOT_READY,
    ERR_MALFORMED_REQUEST,
    ERR_OUTBOUND_HEALTH_NOT_READY,
    ApiError,
    guarded,
)

if TYPE_CHECKING:
    from runtime.api.app import SidecarState

log = logging.getLogger("omnibus.runtime")

RUNTIME_VERSION = "omnibus-0.1.0"
_JSON = "application/json"
_NO_CONTENT = Response(status_code=204)


def routes(state: SidecarState) -> list[BaseRoute]:
    """Dapr's paths for the health, metadata and shutdown APIs."""
    api = _MetaApi(state)
    wrap = guarded()
    return [
        Route("/v1.0/healthz", wrap(api.healthz), methods=["GET"]),
        Route("/v1.0/healthz/outbound", wrap(api.healthz_outbound), methods=["GET"]),
        Route("/v1.0/metadata", wrap(api.metadata), methods=["GET"]),
        Route("/v1.0/metadata/{key}", wrap(api.set_metadata), methods=["PUT"]),
        Route("/v1.0/shutdown", wrap(api.shutdown), methods=["POST"]),
    ]


class _MetaApi:
    """The route handlers, bound to one sidecar's state."""

    def __init__(self, state: SidecarState) -> None:
        self.state = state

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
