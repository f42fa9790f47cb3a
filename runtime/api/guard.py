"""Pure ASGI middleware in front of every route: the API token and the body limit.

Both are cheap on the hot path: one header lookup each, and a byte counter around ``receive``.

- ``DAPR_API_TOKEN`` set: every request except ``GET /v1.0/healthz[/outbound]`` must carry the
  ``dapr-api-token`` header, else 401 ``text/plain`` "invalid api token", as Dapr answers.
- ``--max-body-size``: a ``Content-Length`` above the limit is refused with 413; a body without
  one (chunked) is counted while it streams in, and crossing the limit raises
  :class:`BodyTooLarge`, which the route's error mapping turns into 413.

A 413 is answered only after the rest of the body has been read and thrown away (up to
:data:`DRAIN_LIMIT` bytes within :data:`DRAIN_SECONDS`): a server that closes a socket with
unread data makes the kernel reset the connection, and clients that send the whole body before
reading (Python's ``urllib`` and ``requests``, which also ask for ``Connection: close``) then get
``ConnectionResetError`` instead of the answer.  A client that sent ``Expect: 100-continue`` has
sent no body yet and gets the 413 at once; a body beyond the drain bound gets it with
``Connection: close``.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from runtime.api.dapr_errors import ERR_BODY_TOO_LARGE, ApiError

DRAIN_LIMIT = 64 * 1024 * 1024  # bytes of a refused body read and discarded before the 413
DRAIN_SECONDS = 10.0

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_HEALTH_PATHS = frozenset({"/v1.0/healthz", "/v1.0/healthz/outbound"})
_TOKEN_HEADER = b"dapr-api-token"


class BodyTooLarge(ApiError):
    """The request body is larger than ``--max-body-size``."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            413, ERR_BODY_TOO_LARGE, f"the request body exceeds the limit of {limit} bytes"
        )


async def drain(receive: Receive, budget: int = DRAIN_LIMIT) -> bool:
    """Read and discard the rest of a request body; True if it ended within the bounds."""
    try:
        async with asyncio.timeout(DRAIN_SECONDS):
            while budget >= 0:
                message = await receive()
                if message["type"] != "http.request":
                    return False  # the client went away
                budget -= len(message.get("body", b""))
                if not message.get("more_body", False):
                    return True
    except TimeoutError:
        pass
    return False


async def _send_plain(
    send: Send, status: int, body: bytes, content_type: bytes, *, close: bool = False
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class ApiGuard:
    """Checks the API token and bounds the request body before a route sees the request."""

    def __init__(self, app: ASGIApp, *, api_token: str | None, max_body_size: int) -> None:
        self._app = app
        self._token = api_token.encode() if api_token else None
        self._limit = max_body_size

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        if self._token is not None and not self._exempt(scope):
            given = next((v for k, v in headers if k == _TOKEN_HEADER), b"")
            if not hmac.compare_digest(given, self._token):
                await _send_plain(send, 401, b"invalid api token", b"text/plain; charset=utf-8")
                return
        length = next((v for k, v in headers if k == b"content-length"), None)
        if length is not None:
            if not length.isdigit():
                error = ApiError(400, "ERR_MALFORMED_REQUEST", "invalid Content-Length header")
                await _send_plain(send, 400, error.body(), b"application/json")
                return
            if int(length) > self._limit:
                await self._refuse(headers, receive, send, int(length))
                return
            await self._app(scope, receive, send)  # the server enforces Content-Length
            return
        await self._app(scope, self._counting(receive), send)

    async def _refuse(
        self, headers: list[tuple[bytes, bytes]], receive: Receive, send: Send, length: int
    ) -> None:
        """413 for a body announced too large, readable by clients that send it regardless."""
        expects = any(k == b"expect" and v.lower() == b"100-continue" for k, v in headers)
        ended = expects or (length <= DRAIN_LIMIT and await drain(receive))
        body = BodyTooLarge(self._limit).body()
        await _send_plain(send, 413, body, b"application/json", close=not ended)

    def _exempt(self, scope: Scope) -> bool:
        return scope["method"] == "GET" and scope["path"] in _HEALTH_PATHS

    def _counting(self, receive: Receive) -> Receive:
        received = 0
        limit = self._limit

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    if message.get("more_body", False):
                        await drain(receive)  # so that the client can read the 413
                    raise BodyTooLarge(limit)
            return message

        return counted
