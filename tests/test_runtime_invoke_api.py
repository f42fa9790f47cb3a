"""Service invocation through the sidecar's ASGI app: two sidecars on one in-memory bus.

The caller sidecar ("checkout", no app) invokes the callee sidecar ("orders") whose app is an
in-memory :class:`AppCaller` answering per its path, so every assertion is about what the
sidecars did to the request and the reply on the way.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import orjson
import pytest

from bus.envelope import Headers
from bus.memory import MemoryBroker, MemoryHub
from invoke import AppUnreachable, Call, Reply
from invoke.client import Invoker
from runtime.api.app import SidecarState, build_app
from runtime.api.guard import ASGIApp
from runtime.api.invoke import NO_APP_ID
from runtime.pubsub.components import PubSubs

CALLER, CALLEE = "checkout", "orders"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE}-00f067aa0ba902b7-01"


@dataclass
class FakeApp:
    """An app: ``status/<n>`` answers n, ``down`` is unreachable, ``slow`` sleeps, else 200 echo."""

    calls: list[Call] = field(default_factory=list)

    async def __call__(self, call: Call, timeout: float) -> Reply:
        self.calls.append(call)
        if call.method == "down":
            raise AppUnreachable("dial tcp 127.0.0.1:1: connect: connection refused")
        if call.method == "slow":
            await asyncio.sleep(5)
        if call.method.startswith("status/"):
            status = int(call.method.removeprefix("status/"))
            return Reply(status, Headers([("Content-Type", "text/plain")]), b"as you wish")
        if call.method == "cookies":
            cookies = Headers([("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"), ("X-Extra", "x")])
            return Reply(200, cookies, b"")
        if call.method == "head":
            return Reply(200, Headers([("Content-Length", "1234")]), b"")
        echoed = Headers([("Content-Type", "application/octet-stream"), ("Connection", "close")])
        return Reply(200, echoed, call.body)


@dataclass(frozen=True)
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name.lower()]

    def json(self) -> Any:
        return orjson.loads(self.body)


async def send(
    app: ASGIApp,
    method: str,
    raw_path: str,
    *,
    query: str = "",
    body: bytes = b"",
    headers: Sequence[tuple[str, str]] = (),
) -> Answer:
    """One request with a raw (still percent-encoded) path and repeated headers."""
    raw_headers = [(k.lower().encode(), v.encode()) for k, v in headers]
    raw_headers += [(b"host", b"localhost:3500"), (b"content-length", str(len(body)).encode())]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": unquote(raw_path),
        "raw_path": raw_path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": raw_headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 3500),
    }
    queue = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return queue.pop(0) if queue else {"type": "http.disconnect"}

    async def record(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, record)
    start = next(m for m in sent if m["type"] == "http.response.start")
    payload = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    pairs = [(k.decode(), v.decode()) for k, v in start.get("headers", [])]
    return Answer(start["status"], pairs, payload)


@dataclass
class Pair:
    """A caller sidecar and a callee sidecar with its app."""

    caller: ASGIApp
    callee: ASGIApp
    app: FakeApp
    states: list[SidecarState]


def _state(app_id: str, broker: MemoryBroker) -> SidecarState:
    state = SidecarState(app_id=app_id, pubsubs=PubSubs([]), api_ready=True, bus=broker)
    state.invoker = Invoker(broker, app_id)
    return state


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    hub = MemoryHub()
    brokers = [MemoryBroker(hub), MemoryBroker(hub)]
    for broker in brokers:
        await broker.connect()
    caller, callee = _state(CALLER, brokers[0]), _state(CALLEE, brokers[1])
    app = FakeApp()
    assert callee.invoker is not None
    await callee.invoker.serve(app)
    yield Pair(build_app(caller, max_body_size=1024), build_app(callee), app, [caller, callee])
    await callee.invoker.close()
    for broker in brokers:
        await broker.close()


@pytest.mark.parametrize("verb", ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
@pytest.mark.parametrize("status", [200, 201, 202, 409, 502])
async def test_every_verb_gets_the_apps_own_status(pair: Pair, verb: str, status: int) -> None:
    answer = await send(pair.caller, verb, f"/v1.0/invoke/{CALLEE}/method/status/{status}")
    assert answer.status == status
    assert answer.body == b"as you wish"
    assert answer.header("content-type") == ["text/plain"]
    (call,) = pair.app.calls
    assert call.verb == verb
    assert call.caller == CALLER


async def test_path_and_query_pass_through_raw(pair: Pair) -> None:
    path = f"/v1.0/invoke/{CALLEE}/method/orders//a%2Fb/./c%20d/"
    answer = await send(pair.caller, "GET", path, query="x=1&x=2&y=%20z")
    assert answer.status == 200
    (call,) = pair.app.calls
    assert call.method == "orders/a%2Fb/c%20d"
    assert call.query == "x=1&x=2&y=%20z"


async def test_method_never_climbs_above_the_root(pair: Pair) -> None:
    await send(pair.caller, "GET", f"/v1.0/invoke/{CALLEE}/method/../../admin")
    assert pair.app.calls[0].method == "admin"


async def test_body_and_multi_valued_headers_both_ways(pair: Pair) -> None:
    body = bytes(range(256)) * 3
    answer = await send(
        pair.caller,
        "POST",
        f"/v1.0/invoke/{CALLEE}/method/echo",
        body=body[:1000],
        headers=[("X-Multi", "one"), ("X-Multi", "two"), ("Content-Type", "application/x-thing")],
    )
    assert answer.body == body[:1000]
    assert answer.header("connection") == []  # hop-by-hop answers stay between app and sidecar
    call = pair.app.calls[0]
    assert call.headers.get_all("x-multi") == ["one", "two"]
    assert call.headers.get("content-type") == "application/x-thing"
    cookies = await send(pair.caller, "GET", f"/v1.0/invoke/{CALLEE}/method/cookies")
    assert cookies.header("set-cookie") == ["a=1", "b=2"]
    assert cookies.header("x-extra") == ["x"]


async def test_added_headers_overwrite_spoofed_ones(pair: Pair) -> None:
    await send(
        pair.caller,
        "GET",
        f"/v1.0/invoke/{CALLEE}/method/echo",
        headers=[
            ("dapr-caller-app-id", "evil"),
            ("dapr-callee-app-id", "evil"),
            ("X-Forwarded-For", "6.6.6.6"),
            ("X-Forwarded-Host", "evil.example"),
            ("Forwarded", "for=6.6.6.6"),
            ("traceparent", TRACEPARENT),
            ("dapr-api-token", "secret"),
            ("Connection", "keep-alive, X-Hop"),
            ("X-Hop", "hop"),
            ("Keep-Alive", "timeout=5"),
        ],
    )
    headers = pair.app.calls[0].headers
    assert headers.get_all("dapr-caller-app-id") == [CALLER]
    assert headers.get_all("dapr-callee-app-id") == [CALLEE]
    assert headers.get_all("x-forwarded-for") == ["127.0.0.1"]
    assert headers.get_all("x-forwarded-host") == ["localhost:3500"]
    assert headers.get_all("x-forwarded-proto") == ["http"]
    assert headers.get_all("forwarded") == ["for=127.0.0.1;host=localhost:3500;proto=http"]
    (traceparent,) = headers.get_all("traceparent")
    assert traceparent.startswith(f"00-{TRACE}-") and traceparent != TRACEPARENT
    for dropped in ("dapr-api-token", "connection", "x-hop", "keep-alive"):
        assert dropped not in headers


async def test_a_call_without_traceparent_starts_a_trace(pair: Pair) -> None:
    await send(pair.caller, "GET", f"/v1.0/invoke/{CALLEE}/method/echo")
    (traceparent,) = pair.app.calls[0].headers.get_all("traceparent")
    version, trace, span, flags = traceparent.split("-")
    assert (version, len(trace), len(span), flags) == ("00", 32, 16, "01")


async def test_dapr_app_id_header_on_any_other_path(pair: Pair) -> None:
    answer = await send(
        pair.caller, "PUT", "/status/201", query="a=b", headers=[("dapr-app-id", CALLEE)]
    )
    assert answer.status == 201
    (call,) = pair.app.calls
    assert (call.method, call.query) == ("status/201", "a=b")
    assert "dapr-app-id" not in call.headers


async def test_dapr_app_id_header_leaves_the_sidecars_own_paths_alone(pair: Pair) -> None:
    answer = await send(pair.caller, "GET", "/v1.0/metadata", headers=[("dapr-app-id", CALLEE)])
    assert answer.status == 200
    assert answer.json()["id"] == CALLER
    assert pair.app.calls == []


async def test_basic_auth_names_the_app(pair: Pair) -> None:
    token = base64.b64encode(f"dapr-app-id:{CALLEE}".encode()).decode()
    answer = await send(
        pair.caller, "GET", "/status/202", headers=[("Authorization", f"Basic {token}")]
    )
    assert answer.status == 202
    assert pair.app.calls[0].method == "status/202"


async def test_other_basic_auth_is_not_an_invocation(pair: Pair) -> None:
    token = base64.b64encode(b"alice:secret").decode()
    basic = [("Authorization", f"Basic {token}")]
    answer = await send(pair.caller, "GET", "/orders", headers=basic)
    assert answer.status == 404
    assert answer.json()["errorCode"] == "ERR_DIRECT_INVOKE"
    assert pair.app.calls == []


@pytest.mark.parametrize(("verb", "path"), [("GET", "/nothing/here"), ("DELETE", "/v1.0/metadata")])
async def test_unserved_requests_fall_back_to_invocation_as_in_dapr(
    pair: Pair, verb: str, path: str
) -> None:
    answer = await send(pair.caller, verb, path)
    assert answer.status == 404
    assert answer.json() == {"errorCode": "ERR_DIRECT_INVOKE", "message": NO_APP_ID}
    # with a dapr-app-id header the same request is an invocation
    answer = await send(pair.caller, verb, path, headers=[("dapr-app-id", CALLEE)])
    assert answer.status == 200
    assert pair.app.calls[0].method == path.lstrip("/")


async def test_head_keeps_the_apps_content_length(pair: Pair) -> None:
    answer = await send(pair.caller, "HEAD", f"/v1.0/invoke/{CALLEE}/method/head")
    assert answer.status == 200
    assert answer.header("content-length") == ["1234"]
    assert answer.body == b""


@pytest.mark.parametrize(
    "path", ["/v1.0/invoke/", f"/v1.0/invoke/{CALLEE}", f"/v1.0/invoke/{CALLEE}/nomethod/x"]
)
async def test_no_app_id_is_404(pair: Pair, path: str) -> None:
    answer = await send(pair.caller, "GET", path)
    assert answer.status == 404
    assert answer.json()["errorCode"] == "ERR_DIRECT_INVOKE"


async def test_no_running_instance_fails_at_once(pair: Pair) -> None:
    started = asyncio.get_running_loop().time()
    answer = await send(pair.caller, "POST", "/v1.0/invoke/nobody/method/x", body=b"{}")
    assert asyncio.get_running_loop().time() - started < 1
    assert answer.status == 500
    error = answer.json()
    assert error["errorCode"] == "ERR_DIRECT_INVOKE"
    reason = "no running instance of app nobody"
    assert error["message"] == f"failed to invoke, id: nobody, err: {reason}"


async def test_app_not_listening_is_500_with_the_reason(pair: Pair) -> None:
    answer = await send(pair.caller, "GET", f"/v1.0/invoke/{CALLEE}/method/down")
    assert answer.status == 500
    error = answer.json()
    assert error["errorCode"] == "ERR_DIRECT_INVOKE"
    assert error["message"].startswith(f"failed to invoke, id: {CALLEE}, err: dial tcp")
    assert "connection refused" in error["message"]


async def test_invalid_app_id_is_a_client_error(pair: Pair) -> None:
    answer = await send(pair.caller, "GET", "/v1.0/invoke/bad%20id/method/x")
    assert answer.status == 400
    assert "app id" in answer.json()["message"]


async def test_body_over_the_limit_is_413(pair: Pair) -> None:
    answer = await send(pair.caller, "POST", f"/v1.0/invoke/{CALLEE}/method/echo", body=b"x" * 2048)
    assert answer.status == 413
    assert pair.app.calls == []


async def test_an_app_invoking_itself_needs_no_bus(pair: Pair) -> None:
    # Given an invoker with no bus at all: only its own app is reachable
    state = pair.states[1]
    state.invoker = Invoker(None, CALLEE, local=pair.app)
    answer = await send(build_app(state), "GET", f"/v1.0/invoke/{CALLEE}/method/status/201")
    assert answer.status == 201
    headers = pair.app.calls[0].headers
    assert headers.get_all("dapr-caller-app-id") == [CALLEE]
    assert headers.get_all("dapr-callee-app-id") == [CALLEE]


async def test_respond_async_without_async_invocations_is_501(pair: Pair) -> None:
    assert pair.states[0].invocations is None
    answer = await send(
        pair.caller,
        "POST",
        f"/v1.0/invoke/{CALLEE}/method/echo",
        headers=[("Prefer", "wait=10, respond-async")],
    )
    assert answer.status == 501
    assert answer.json()["errorCode"] == "ERR_DIRECT_INVOKE"
    assert pair.app.calls == []


async def test_not_ready_without_an_invoker(pair: Pair) -> None:
    state = pair.states[0]
    state.invoker = None
    answer = await send(build_app(state), "GET", f"/v1.0/invoke/{CALLEE}/method/echo")
    assert answer.status == 500
    assert answer.json()["message"] == "invoke API is not ready"


async def test_random_requests_get_an_answer_or_a_dapr_error(pair: Pair) -> None:
    import random

    rng = random.Random(11)
    pieces = ["", "/", "//", ".", "..", "%2F", "%ZZ", "method", "a b", "é", "x?y", ";", "%00"]
    names = [CALLEE, "nobody", "bad id", "", "%6Frders", "a" * 200, "..", "orders.ns"]
    for _ in range(300):
        app_id = rng.choice(names)
        method = "/".join(rng.choice(pieces) for _ in range(rng.randint(0, 4)))
        form = rng.randrange(3)
        headers: list[tuple[str, str]] = [("X-R", rng.choice(pieces))]
        if form == 0:
            path = f"/v1.0/invoke/{app_id}/method/{method}"
        elif form == 1:
            path, headers = f"/{method}", [*headers, ("dapr-app-id", app_id)]
        else:
            token = base64.b64encode(rng.choice([b"dapr-app-id:", b"x:", b""]) + app_id.encode())
            path, headers = f"/{method}", [*headers, ("Authorization", f"Basic {token.decode()}")]
        verb = rng.choice(["GET", "POST", "HEAD", "PATCH", "X-CUSTOM"])
        body = rng.randbytes(rng.randint(0, 64))
        answer = await send(pair.caller, verb, path, body=body, headers=headers)
        # Every failure is Dapr's error body; nothing escapes as a bare 500
        if answer.status >= 400 and answer.body:
            assert "errorCode" in answer.json(), (verb, path, headers, answer)
        assert answer.status < 500 or answer.json()["errorCode"] == "ERR_DIRECT_INVOKE", (
            verb,
            path,
            answer,
        )
