"""The sidecar's HTTP API (Dapr v1.0 paths, bodies and status codes) as a Starlette app.

Routes: each building block's module gives its own (:mod:`~runtime.api.publish`,
:mod:`~runtime.api.meta`, :mod:`~runtime.api.state`, :mod:`~runtime.api.invoke`, ...); the hot
paths (single publishes, invocations, single-key state calls) are served in front of the router.
Every route answers errors through :func:`runtime.api.dapr_errors.api_error`, so an exception
never escapes as a bare 500; the token and the body limit are checked before any route by
:class:`runtime.api.guard.ApiGuard`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.routing import BaseRoute

from bus.broker import BaseBroker
from components.specs import SubscriptionSpec
from invoke.client import Invoker
from runtime.api import invocations as invocations_api
from runtime.api import invoke as invoke_api
from runtime.api import meta as meta_api
from runtime.api import openapi as openapi_api
from runtime.api import publish as publish_api
from runtime.api import state as state_api
from runtime.api.guard import ApiGuard
from runtime.channel import AppChannel
from runtime.pubsub.components import PubSubs
from state.service import StateClient

if TYPE_CHECKING:
    from runtime.async_invocations import Invocations


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
    namespace: str = ""  # NAMESPACE: the sidecar's own; "" is the default namespace
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


def build_app(
    state: SidecarState,
    *,
    api_token: str | None = None,
    max_body_size: int = 4 * 1024 * 1024,
    lifespan: Any = None,
) -> ApiGuard:
    """The ASGI app of one sidecar: the routes behind the token and body-limit guard.

    Single publishes are served by :class:`~runtime.api.publish.PublishEndpoint`,
    ``/v1.0/invoke/...`` by :class:`~runtime.api.invoke.InvokeEndpoint` and the single-key state
    calls by :class:`~runtime.api.state.StateEndpoint` before the router; everything else by
    Starlette.
    """
    routes: list[BaseRoute] = [*publish_api.bulk_routes(state), *meta_api.routes(state)]
    routes += state_api.routes(state)
    routes += invocations_api.routes(state)
    routes += openapi_api.routes(state)  # GET /v1.0/openapi.json
    invoke_route = invoke_api.InvokeRoute(state)
    routes.append(invoke_route)  # last: the dapr-app-id form takes any path
    app = Starlette(routes=routes, lifespan=lifespan)
    fast = state_api.StateEndpoint(invoke_api.InvokeEndpoint(app, invoke_route), state)
    endpoint = publish_api.PublishEndpoint(fast, pubsubs=state.pubsubs, app_id=state.app_id)
    return ApiGuard(endpoint, api_token=api_token, max_body_size=max_body_size)
