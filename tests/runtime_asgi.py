"""Calling the sidecar's ASGI app in-process, for the runtime's unit tests.

A few lines of ASGI instead of an HTTP client: requests go straight to the app, with or without a
``Content-Length`` (chunked bodies arrive in several ``http.request`` messages).  Also: pub/sub
components over in-memory brokers, shaped like ``components.registry.PubSub``, and
:func:`served`, the app behind a real uvicorn server for tests that need real sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson
import uvicorn

from bus.broker import BaseBroker
from bus.options import RetryPolicy
from runtime.api.guard import ASGIApp


@dataclass(frozen=True)
class Defaults:
    """Subscription defaults of a test component (Dapr's defaults, quick retries)."""

    group: str | None = None
    concurrency: int = 10
    batch_size: int = 100
    processing_timeout: float = 5.0
    retry: RetryPolicy = field(
        default_factory=lambda: RetryPolicy(
            max_attempts=3, initial_interval=0.01, max_interval=0.05, jitter=0.0
        )
    )


@dataclass(frozen=True)
class Component:
    """A pub/sub component over any broker."""

    name: str
    broker: BaseBroker
    type: str = "pubsub.in-memory"
    defaults: Defaults = field(default_factory=Defaults)
    capabilities: tuple[str, ...] = ("BULK_PUBLISH",)


@dataclass(frozen=True)
class Reply:
    """The answer of one request."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON."""
        return orjson.loads(self.body)


async def call(
    app: ASGIApp,
    method: str,
    url: str,
    *,
    body: bytes = b"",
    headers: Mapping[str, str] | None = None,
    chunks: int = 0,
) -> Reply:
    """Send one request to ``app``; ``chunks`` > 0 streams the body without Content-Length."""
    parts = urlsplit(url)
    raw_headers = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    if chunks:
        size = max(1, -(-len(body) // chunks))
        pieces = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
    else:
        raw_headers.append((b"content-length", str(len(body)).encode()))
        pieces = [body]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": unquote(parts.path),  # decoded, as uvicorn gives it
        "raw_path": parts.path.encode(),
        "query_string": parts.query.encode(),
        "root_path": "",
        "headers": raw_headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 3500),
    }
    queue = [
        {"type": "http.request", "body": piece, "more_body": i < len(pieces) - 1}
        for i, piece in enumerate(pieces)
    ]
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return queue.pop(0) if queue else {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    payload = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    reply_headers = {k.decode(): v.decode() for k, v in start.get("headers", [])}
    return Reply(start["status"], reply_headers, payload)


@contextlib.asynccontextmanager
async def served(app: ASGIApp) -> AsyncIterator[int]:
    """``app`` served by uvicorn (httptools) on a free loopback port, which is yielded."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        http="httptools",
        loop="none",
        lifespan="off",
        log_config=None,
        access_log=False,
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:
                await asyncio.sleep(0.01)
        yield int(server.servers[0].sockets[0].getsockname()[1])
    finally:
        server.should_exit = True
        await serving
