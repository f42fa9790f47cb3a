"""The app channel's start-up calls: waiting for the port, reading /dapr/subscribe."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from runtime.channel import AppChannel

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
