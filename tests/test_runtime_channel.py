"""The app channel: start-up calls (waiting for the port, /dapr/subscribe) and ``call``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from bus.envelope import Headers
from runtime.channel import AppChannel, AppResponse, AppUnavailable
from tests.test_runtime_http1 import RawServer, fixed, ok

Serve = Callable[[web.Application], Awaitable[int]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    runners: list[web.AppRunner] = []

    async def start(app: web.Application) -> int:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port: int = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return port

    yield start
    for runner in runners:
        await runner.cleanup()


async def test_subscriptions_are_retried_while_the_app_answers_5xx(serve: Serve) -> None:
    calls = 0

    async def subscribe(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        if calls < 3:
            return web.Response(status=503)
        return web.json_response([{"pubsubname": "p", "topic": "t", "route": "/t"}])

    app = web.Application()
    app.router.add_get("/dapr/subscribe", subscribe)
    port = await serve(app)
    async with AppChannel("127.0.0.1", port) as channel:
        await channel.wait_until_listening()
        assert await channel.programmatic_subscriptions() == [
            {"pubsubname": "p", "topic": "t", "route": "/t"}
        ]
    assert calls == 3


async def test_404_means_none_and_a_hanging_app_gives_up(serve: Serve) -> None:
    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(1)
        return web.Response()

    app = web.Application()
    app.router.add_get("/dapr/subscribe", hang)
    port = await serve(app)
    async with AppChannel("127.0.0.1", port) as channel:
        assert await channel.programmatic_subscriptions(attempts=2, timeout=0.1) is None
    empty = await serve(web.Application())
    async with AppChannel("127.0.0.1", empty) as channel:
        assert await channel.programmatic_subscriptions() is None


async def test_wait_until_listening_waits_for_the_health_path(serve: Serve) -> None:
    healthy = False

    async def health(request: web.Request) -> web.Response:
        return web.Response(status=200 if healthy else 503)

    app = web.Application()
    app.router.add_get("/healthz", health)
    port = await serve(app)
    async with AppChannel("127.0.0.1", port) as channel:
        waiting = asyncio.create_task(channel.wait_until_listening("/healthz"))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        healthy = True
        await asyncio.wait_for(waiting, 5)


async def test_call_passes_requests_and_answers_verbatim() -> None:
    reply = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 201 Created\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nX-App: yes\r\n"
        b"Content-Length: 4\r\n\r\ndone"
    )
    async with RawServer(fixed(reply)) as server:
        async with AppChannel("127.0.0.1", server.port, app_api_token="app-secret") as channel:
            given = Headers(
                [
                    ("X-Multi", "1"),
                    ("x-multi", "2"),
                    ("Connection", "close"),
                    ("Transfer-Encoding", "chunked"),
                    ("Proxy-Authorization", "x"),
                    ("Host", "evil"),
                    ("dapr-api-token", "the-caller's"),
                ]
            )
            answer = await channel.call("PUT", "/orders/1?a=%2F&b=c+d", given, b"body", timeout=5)
    assert isinstance(answer, AppResponse)
    assert (answer.status, answer.body) == (201, b"done")
    assert answer.headers.get_all("set-cookie") == ["a=1", "b=2"]
    request = server.requests[0]
    assert request.startswith(b"PUT /orders/1?a=%2F&b=c+d HTTP/1.1\r\n")
    assert b"X-Multi: 1\r\nx-multi: 2\r\n" in request
    assert b"dapr-api-token: app-secret\r\n" in request
    for dropped in (b"the-caller's", b"close", b"chunked", b"Proxy-", b"evil"):
        assert dropped not in request
    assert request.count(b"Host:") == 1 and b"Content-Length: 4\r\n" in request


async def test_call_carries_large_and_chunked_bodies() -> None:
    big = bytes(range(256)) * (9 * 4096)  # 9 MiB
    chunk = b"%x\r\n%s\r\n" % (len(big), big)

    async def echo_chunked(request: bytes) -> bytes:
        assert request.endswith(big)
        return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk + b"0\r\n\r\n"

    async with RawServer(echo_chunked) as server:
        async with AppChannel("127.0.0.1", server.port) as channel:
            answer = await channel.call("POST", "/big", Headers(), big, timeout=30)
    assert answer.status == 200 and answer.body == big


async def test_call_head_and_delete() -> None:
    async def answer(request: bytes) -> bytes:
        if request.startswith(b"HEAD"):
            return b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"
        return ok(b"", "204 No Content")

    async with RawServer(answer) as server:
        async with AppChannel("127.0.0.1", server.port) as channel:
            head = await channel.call("HEAD", "/x", Headers(), b"", timeout=5)
            gone = await channel.call("DELETE", "/x", Headers(), b"", timeout=5)
    assert (head.status, head.body, head.headers.get("content-length")) == (200, b"", "99")
    assert gone.status == 204


async def test_call_failures_are_app_unavailable() -> None:
    async def never(request: bytes) -> bytes:
        await asyncio.sleep(10)
        return ok()

    async with RawServer(never) as server:
        async with AppChannel("127.0.0.1", server.port) as channel:
            with pytest.raises(AppUnavailable, match="within 0.1s"):
                await channel.call("GET", "/slow", Headers(), b"", timeout=0.1)
        port = server.port
    async with AppChannel("127.0.0.1", port) as channel:
        with pytest.raises(AppUnavailable, match="Refused|Errno") as raised:
            await channel.call("GET", "/", Headers(), b"", timeout=5)
    assert raised.value.reason
