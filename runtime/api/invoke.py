"""Service invocation's HTTP front end: Dapr's ``/v1.0/invoke/{app-id}/method/{path...}``.

Addressing, in Dapr's order (``pkg/api/http/directmessaging.go``):

1. a ``dapr-app-id`` header, on any path the sidecar does not serve itself (or not with that
   verb): the whole path is the method (the header is not forwarded);
2. Basic auth with user ``dapr-app-id`` and the app id as password, likewise;
3. ``/v1.0/invoke/{app-id}/method/{path...}`` with any verb.

As in Dapr, invocation is the router's fallback: any other request the sidecar does not serve
answers 404 ``ERR_DIRECT_INVOKE`` ("failed getting app id ..."), never a bare text 404/405.

The method is read from the *raw* path (``raw_path`` of the ASGI scope), so percent-encoded
segments reach the app as the caller wrote them (``a%2Fb`` stays one segment); duplicate slashes,
``.`` and ``..`` are cleaned as Go's ``path.Clean`` does.  The raw query string, the verb, the body
and every header pass through, less the hop-by-hop ones, ``dapr-app-id`` and ``dapr-api-token``.
Added, overwriting whatever the caller sent (an app cannot spoof them): ``dapr-caller-app-id``,
``dapr-callee-app-id``, ``X-Forwarded-For`` (the caller's address), ``X-Forwarded-Host`` (the
``Host`` it called), ``X-Forwarded-Proto``, ``Forwarded`` (RFC 7239) and ``traceparent`` (a child
span of the caller's trace, else a new trace).  Dapr appends its own host to ``X-Forwarded-*``
instead; omnibus replaces them, since the caller is the local app and no proxy chain precedes it.
The callee's ``APP_API_TOKEN`` is added by the callee's app channel.

The callee's status, headers (every value) and body come back verbatim, non-2xx included, less
hop-by-hop headers and ``Date`` (the sidecar's server writes its own).  Errors are Dapr's: no app
id 404 ``ERR_DIRECT_INVOKE``; no running instance, the app not listening, a time-out 500
``ERR_DIRECT_INVOKE`` ("failed to invoke, id: X, err: ..."); a body over ``--max-body-size`` 413
(the :class:`~runtime.api.guard.ApiGuard`).

Namespaces, as Dapr's ``requestAppIDAndNamespace`` (``pkg/messaging/direct_messaging.go``): the
target of every addressing form is split at its dots.  ``app`` is ``app`` in the caller sidecar's
own namespace (``NAMESPACE``; unset or empty is the default namespace, as is ``default``);
``app.ns`` is ``app`` in namespace ``ns``; more dots answer 500 ``ERR_DIRECT_INVOKE`` ("failed to
invoke, id: a.b.c, err: invalid app id a.b.c").  A target with an empty part (``app.``, ``.ns``)
answers the same: Dapr would look such an app up and find none, and omnibus reads an empty
namespace as the default one, which the caller did not write.  A target starting with
``http://`` or ``https://`` is not split (Dapr's external endpoints, which omnibus does not
serve: it fails as an invalid app id).  Only the same app id in the same namespace is called
directly; ``app.ns`` from a sidecar of ``app`` in another namespace crosses the bus.  The callee's
app gets ``dapr-callee-app-id`` without the namespace, as in Dapr, and ``dapr-caller-namespace``,
the caller sidecar's namespace, ``default`` when ``NAMESPACE`` is unset (Dapr's own default).
Sidecars refuse a dotted ``--app-id`` at start-up (:func:`invoke.call.validate_own_app_id`), as
Dapr's self-hosted sidecar does.

``Prefer: respond-async`` hands the call to the async invocations of ``state.invocations``.
"""

from __future__ import annotations

import base64
import binascii
import logging
import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

from bus.envelope import Headers
from bus.message import validate_name
from components.resiliency import CircuitBreaker, app_breaker, to_retry_policy
from components.specs import ResiliencySpec, Resources
from invoke.call import DEFAULT_NAMESPACE, AppCaller, Call, Reply
from invoke.client import NO_POLICY, InvokePolicy, Invoker, RetryRule, failed_to_invoke
from invoke.errors import AppUnreachable, InvokeError
from invoke.server import DEFAULT_CONCURRENCY
from runtime.api.dapr_errors import ApiError, api_error
from runtime.channel import AppChannel, AppUnavailable, is_hop_by_hop

if TYPE_CHECKING:
    from runtime.api.app import SidecarState

log = logging.getLogger("omnibus.runtime")

T = TypeVar("T")

ERR_DIRECT_INVOKE = "ERR_DIRECT_INVOKE"
APP_ID_HEADER = "dapr-app-id"
INVOCATION_ID_HEADER = "dapr-invocation-id"
INVOKE_PREFIX = "/v1.0/invoke/"
_METHOD_MARK = "/method/"
NO_APP_ID = "failed getting app id either from the URL path or the header dapr-app-id"
# Never forwarded as the caller sent them: the sidecar's own, and the ones it writes itself.
_DROPPED = frozenset(
    {
        APP_ID_HEADER,
        "dapr-api-token",
        "dapr-caller-app-id",
        "dapr-callee-app-id",
        "dapr-caller-namespace",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "forwarded",
        "traceparent",
    }
)
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-[0-9a-f]{16}-([0-9a-f]{2})")
_NO_BODY_STATUSES = frozenset({204, 304})
_POLICY_CACHE = 1024
# The sidecar's HTTP server writes its own Date; a second one would make the answer invalid.
_WRITTEN_BY_SERVER = frozenset({"date"})


class InvokeEndpoint:
    """Sends ``/v1.0/invoke/...`` straight to ``route``, past Starlette's middleware and router
    (which would try every route before its fallback); every other request goes to ``app``.

    No other route lives under that prefix, so the answer is the router's; the route turns every
    failure into Dapr's error body itself.
    """

    def __init__(self, app: ASGIApp, route: InvokeRoute) -> None:
        self._app = app
        self._route = route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(INVOKE_PREFIX):
            await self._route.handle(scope, receive, send)
        else:
            await self._app(scope, receive, send)


class InvokeRoute(BaseRoute):
    """Dapr's fallback route: every HTTP request no route before it serves (as Dapr routes
    both "not found" and "method not allowed" to invocation), so ``/v1.0/invoke/...`` and the
    ``dapr-app-id`` forms invoke, and anything else answers 404 ``ERR_DIRECT_INVOKE``."""

    def __init__(self, state: SidecarState) -> None:
        self.state = state

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        """FULL for every HTTP request; routes mounted before this one win for their paths."""
        return (Match.FULL, {}) if scope["type"] == "http" else (Match.NONE, {})

    def url_path_for(self, name: str, /, **path_params: Any) -> Any:
        """Not addressable by name."""
        raise NotImplementedError

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one invocation; every failure becomes Dapr's error body."""
        request = Request(scope, receive)
        try:
            response = await self._invoke(request)
        except InvokeError as exc:
            response = ApiError(500, ERR_DIRECT_INVOKE, str(exc)).response()
        except Exception as exc:
            response = api_error(exc, failure=ERR_DIRECT_INVOKE).response()
        await response(scope, receive, send)

    async def _invoke(self, request: Request) -> Response:
        state = self.state
        target = find_target(request.scope)
        if target is None:
            raise ApiError(404, ERR_DIRECT_INVOKE, NO_APP_ID)
        app_id, namespace = split_target(target[0], state.namespace)
        headers = forward_headers(
            request.scope, caller=state.app_id, callee=app_id, caller_namespace=state.namespace
        )
        call = Call(
            app_id=app_id,
            method=target[1],
            verb=request.method.upper(),
            query=request.scope["query_string"].decode("latin-1"),
            headers=headers,
            body=await request.body(),
            caller=state.app_id,
            namespace=namespace,
        )
        if "respond-async" in _preferences(request.headers.getlist("prefer")):
            if state.invocations is None:
                raise ApiError(501, ERR_DIRECT_INVOKE, "async invocations are not enabled")
            return await state.invocations.submit(call, request)
        if state.invoker is None:
            raise ApiError(500, ERR_DIRECT_INVOKE, "invoke API is not ready")
        reply = await state.invoker.invoke(call)
        return reply_response(reply, head=call.verb == "HEAD")


def find_target(scope: Scope) -> tuple[str, str] | None:
    """The callee app id and the raw method path of a request, or None if it names no app."""
    raw_path = scope.get("raw_path") or scope["path"].encode()
    path = raw_path.decode("latin-1").partition("?")[0]
    header_id = _header_app_id(scope)
    if header_id is not None:
        return header_id, clean_path(path)
    if not path.startswith(INVOKE_PREFIX):
        return None
    rest = path[len(INVOKE_PREFIX) :].lstrip("/")
    index = rest.find(_METHOD_MARK)
    if index <= 0:
        return None
    app_id = unquote(rest[:index])
    return (app_id, clean_path(rest[index + len(_METHOD_MARK) :])) if app_id else None


def split_target(target: str, own_namespace: str) -> tuple[str, str]:
    """The callee's app id and namespace in ``target`` (``app`` or ``app.namespace``; see the
    module docstring); ApiError for more dots or an empty part, InvalidName for a bad name."""
    if target.startswith(("http://", "https://")):
        return validate_name(target, "app id"), own_namespace
    parts = target.split(".")
    if len(parts) == 1:
        return validate_name(target, "app id"), own_namespace
    if len(parts) > 2 or not all(parts):
        raise ApiError(500, ERR_DIRECT_INVOKE, failed_to_invoke(target, f"invalid app id {target}"))
    return validate_name(parts[0], "app id"), validate_name(parts[1], "namespace")


def clean_path(path: str) -> str:
    """Go's ``path.Clean`` of a method path, without its leading slash (never above the root)."""
    parts: list[str] = []
    for segment in path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if parts:
                parts.pop()
            continue
        parts.append(segment)
    return "/".join(parts)


def _header_app_id(scope: Scope) -> str | None:
    authorization = None
    for name, value in scope["headers"]:
        if name == b"dapr-app-id" and value:
            return str(value.decode("latin-1"))
        if name == b"authorization":
            authorization = value
    if authorization is None or not authorization.startswith(b"Basic "):
        return None
    try:
        user, sep, password = base64.b64decode(authorization[6:], validate=True).partition(b":")
    except (binascii.Error, ValueError):
        return None
    if sep and user.lower() == b"dapr-app-id" and password and b":" not in password:
        return str(password.decode("latin-1"))
    return None


def _preferences(values: Iterable[str]) -> set[str]:
    """The preference tokens of ``Prefer`` headers (RFC 7240), lower-cased, parameters dropped."""
    return {
        token.split(";")[0].split("=")[0].strip().lower()
        for value in values
        for token in value.split(",")
    }


def forward_headers(
    scope: Scope, *, caller: str, callee: str, caller_namespace: str = ""
) -> Headers:
    """The headers the callee's app receives (see the module docstring)."""
    received = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
    listed = {
        token.strip().lower()
        for name, value in received
        if name == "connection"
        for token in value.split(",")
    }
    headers = Headers(
        (name, value)
        for name, value in received
        if name not in _DROPPED and name not in listed and not is_hop_by_hop(name)
    )
    given = dict(received)
    client = scope.get("client") or ("", 0)
    host = given.get("host", "")
    proto = scope.get("scheme", "http")
    headers.add("dapr-caller-app-id", caller)
    headers.add("dapr-caller-namespace", caller_namespace or DEFAULT_NAMESPACE)
    headers.add("dapr-callee-app-id", callee)
    headers.add("X-Forwarded-For", client[0])
    headers.add("X-Forwarded-Host", host)
    headers.add("X-Forwarded-Proto", proto)
    address = f'"[{client[0]}]"' if ":" in client[0] else client[0]
    headers.add("Forwarded", f"for={address};host={host};proto={proto}")
    headers.add("traceparent", child_traceparent(given.get("traceparent")))
    return headers


def child_traceparent(given: str | None) -> str:
    """A W3C traceparent for the hop to the callee: same trace and flags, a new span id."""
    match = _TRACEPARENT.fullmatch(given.strip()) if given else None
    if match is not None and match[1] != "0" * 32:
        trace, flags = match[1], match[2]
    else:
        trace, flags = f"{random.getrandbits(128):032x}", "01"  # unique, not secret
    return f"00-{trace}-{random.getrandbits(64):016x}-{flags}"


def reply_response(reply: Reply, *, head: bool = False) -> Response:
    """The callee's reply as the caller's response: status, every header value, body."""
    response = Response(status_code=reply.status)
    raw = [
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in reply.headers.items()
        if not is_hop_by_hop(name) and name.lower() not in _WRITTEN_BY_SERVER
    ]
    if head:
        # The app's own Content-Length describes the body a GET would have had.
        length = reply.headers.get("content-length")
        if length is not None and length.isdigit():
            raw.append((b"content-length", length.encode()))
    elif reply.status not in _NO_BODY_STATUSES and not 100 <= reply.status < 200:
        raw.append((b"content-length", str(len(reply.body)).encode()))
    response.body = b"" if head else reply.body
    response.raw_headers = raw
    return response


def channel_caller(channel: AppChannel) -> AppCaller:
    """The :class:`AppCaller` of this sidecar's app, over its app channel."""

    async def call_app(call: Call, timeout: float) -> Reply:
        target = "/" + call.method + (f"?{call.query}" if call.query else "")
        headers = call.headers
        if call.invocation_id is not None:
            headers = headers.copy()
            headers.set(INVOCATION_ID_HEADER, call.invocation_id)
        try:
            answer = await channel.call(call.verb, target, headers, call.body, timeout=timeout)
        except AppUnavailable as exc:
            raise AppUnreachable(str(exc) or "the app is not reachable") from exc
        # Content-Length stays: a HEAD answer's tells the caller what a GET would return.
        kept = Headers(
            (k, v)
            for k, v in answer.headers.items()
            if not is_hop_by_hop(k) or k.lower() == "content-length"
        )
        return Reply(answer.status, kept, answer.body)

    return call_app


def build_invoker(state: SidecarState, resources: Resources) -> Invoker:
    """The sidecar's invoker over its system bus, with the apps' Resiliency policies."""
    return Invoker(
        state.bus,
        state.app_id,
        policies=app_policies(resources.resiliencies),
        namespace=state.namespace,
    )


def app_policies(resiliencies: Sequence[ResiliencySpec]) -> Callable[[str], InvokePolicy]:
    """The policy for calls to each app: ``targets.apps.<id>``, else Dapr's reserved defaults.

    Resolved once per app id and kept (its circuit breaker counts across calls); at most
    :data:`_POLICY_CACHE` app ids are kept, the oldest forgotten first.
    """
    if not resiliencies:
        return lambda _: NO_POLICY
    known: dict[str, InvokePolicy] = {}

    def policy(app_id: str) -> InvokePolicy:
        found = known.get(app_id)
        if found is None:
            if len(known) >= _POLICY_CACHE:
                del known[next(iter(known))]
            found = known[app_id] = _app_policy(resiliencies, app_id)
        return found

    return policy


def _app_policy(resiliencies: Sequence[ResiliencySpec], app_id: str) -> InvokePolicy:
    retry = _app_target(resiliencies, app_id, "retry", lambda r: r.retries)
    timeout = _app_target(resiliencies, app_id, "timeout", lambda r: r.timeouts)
    breaker = app_breaker(resiliencies, app_id)
    return InvokePolicy(
        timeout=timeout or None,
        retry=None
        if retry is None
        else RetryRule(to_retry_policy(retry), retry.http_status_codes, retry.grpc_status_codes),
        breaker=None if breaker is None else CircuitBreaker(breaker),
    )


def _app_target(
    resiliencies: Sequence[ResiliencySpec],
    app_id: str,
    key: str,
    table: Callable[[ResiliencySpec], Mapping[str, T]],
) -> T | None:
    for resiliency in resiliencies:
        name = resiliency.apps.get(app_id, {}).get(key)
        if name is not None:
            return table(resiliency)[name]
    kind = "Retry" if key == "retry" else "Timeout"
    for reserved in (f"DefaultApp{kind}Policy", f"Default{kind}Policy"):
        for resiliency in resiliencies:
            if reserved in table(resiliency):
                return table(resiliency)[reserved]
    return None


async def serve_invocations(state: SidecarState, channel: AppChannel, concurrency: int) -> None:
    """Once the app channel is up: serve the app's invocations (on the call topic of its app id in
    the sidecar's namespace) and call it directly for itself."""
    if state.invoker is not None:
        bound = concurrency if concurrency > 0 else DEFAULT_CONCURRENCY
        await state.invoker.serve(channel_caller(channel), concurrency=bound)


async def stop_invocations(state: SidecarState) -> None:
    """At shutdown, before the app channel closes: stop taking invocations."""
    if state.invoker is not None:
        await state.invoker.close()
