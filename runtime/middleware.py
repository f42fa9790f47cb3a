"""Pure ASGI middleware in front of every route: the API token and the body limit.

Both are cheap on the hot path: one header lookup each, and a byte counter around ``receive``.

- ``DAPR_API_TOKEN`` set: every request except ``GET /v1.0/healthz[/outbound]`` must carry the
  ``dapr-api-token`` header, else 401 ``text/plain`` "invalid api token", as Dapr answers.
- ``--max-body-size``: a ``Content-Length`` above the limit is refused before anything is read;
  a body without one (chunked) is counted while it streams in, and crossing the limit raises
  :class:`BodyTooLarge`, which the route's error mapping turns into 413.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from runtime.errors import ERR_BODY_TOO_LARGE, ApiError

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


async def _send_plain(send: Send, status: int, body: bytes, content_type: bytes) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
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
                body = BodyTooLarge(self._limit).body()
                await _send_plain(send, 413, body, b"application/json")
                return
            await self._app(scope, receive, send)  # the server enforces Content-Length
            return
        await self._app(scope, self._counting(receive), send)

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
                    raise BodyTooLarge(limit)
            return message

        return counted
