"""A small pooled HTTP/1.1 client: what the app channel needs, at a quarter of aiohttp's cost.

Every delivery is one POST into the app, so the client is on the subscriber's hot path.  aiohttp
spent ~180 µs of CPU per sequential POST on this machine (URL objects, header multidicts, a
payload writer, a response object with its streams); this client spends ~50 µs: it writes the
request in one ``transport.write`` and lets ``httptools`` (already installed with uvicorn) parse
the answer straight from ``data_received``.

What it does, and all it does:

- keep-alive connections to one ``host:port``, reused LIFO; ``limit`` > 0 bounds the requests in
  flight (the rest wait), like ``--app-max-concurrency``;
- bodies framed by ``Content-Length``, ``Transfer-Encoding: chunked`` or, for HTTP/1.0-style
  answers, the end of the connection; interim ``1xx`` answers are skipped;
- a reused connection the server closed while idle (nothing of the answer arrived) is replaced
  once by a fresh one; every other failure raises :class:`HttpFailure`;
- a request cancelled or timed out by its caller closes its connection (its answer would
  otherwise be read by the next request).

No redirects, cookies, TLS, compression or proxies: the app listens on a local plain port.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import cast
from urllib.parse import quote

import httptools

MAX_RESPONSE_BODY = 64 * 1024 * 1024  # bytes an app may answer with


class HttpFailure(Exception):
    """The request got no complete answer: refused, reset, closed, malformed or too large."""


class _Stale(HttpFailure):
    """A reused connection was closed by the server before any byte of the answer."""


class _Connection(asyncio.Protocol):
    """One TCP connection; one request at a time."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self._body: list[bytes] = []
        self._size = 0
        self._received = False  # a byte of the current answer arrived
        self._headers_done = False
        self._framed = False  # the answer has a Content-Length or is chunked
        self.closed = False
        self.keep_alive = False

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self._received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(HttpFailure(f"malformed answer: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is None or self._waiter.done():
            return
        if self._headers_done and not self._framed:  # the body ran until the end
            self._complete()
        elif not self._received:
            self._fail(_Stale("the connection was closed before an answer"))
        else:
            self._fail(HttpFailure(f"the connection was lost mid-answer ({exc or 'closed'})"))

    # -- httptools callbacks -----------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        lowered = name.lower()
        if lowered == b"content-length" or (
            lowered == b"transfer-encoding" and b"chunked" in value.lower()
        ):
            self._framed = True

    def on_headers_complete(self) -> None:
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > MAX_RESPONSE_BODY:
            self._fail(HttpFailure(f"the answer exceeds {MAX_RESPONSE_BODY} bytes"))
            self.close()
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:  # interim answer: the real one follows
            self._reset()
            return
        self.keep_alive = self._parser.should_keep_alive()
        self._complete()

    # -- the request -------------------------------------------------------------------------

    async def exchange(self, request: bytes) -> tuple[int, bytes]:
        """Send ``request``; the status and body of its answer."""
        if self.closed or self._transport is None or self._transport.is_closing():
            raise _Stale("the connection is closed")
        self._reset()
        self.keep_alive = False
        waiter: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        self._transport.write(request)
        try:
            return await waiter
        finally:
            self._waiter = None

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()

    def _reset(self) -> None:
        self._body, self._size = [], 0
        self._received = self._headers_done = self._framed = False

    def _complete(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result((self._parser.get_status_code(), b"".join(self._body)))

    def _fail(self, exc: HttpFailure) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)


class Http1Client:
    """Requests to ``http://host:port`` over pooled keep-alive connections."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        limit: int = 0,
        headers: Mapping[str, str] | None = None,
        connect_timeout: float = 10.0,
    ) -> None:
        self._host = host
        self._port = port
        self._connect_timeout = connect_timeout
        self._idle: list[_Connection] = []
        self._limit = asyncio.Semaphore(limit) if limit > 0 else None
        self._closed = False
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"  # IPv6 in brackets
        fixed = {"Host": authority, **(headers or {})}
        self._fixed = "".join(f"{k}: {v}\r\n" for k, v in _checked(fixed).items()).encode("latin-1")
        self._targets: dict[str, bytes] = {}

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: Mapping[str, str] | None = None
    ) -> tuple[int, bytes]:
        """Send one request; its status and body, or :class:`HttpFailure`."""
        data = self._encode(method, path, body, headers)
        if self._limit is None:
            return await self._send(data)
        async with self._limit:
            return await self._send(data)

    async def close(self) -> None:
        """Close the idle connections; those in use close when their request ends."""
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    async def _send(self, data: bytes) -> tuple[int, bytes]:
        while True:
            connection, reused = await self._acquire()
            try:
                status, body = await connection.exchange(data)
            except _Stale:
                connection.close()
                if reused:
                    continue  # closed by the server while idle: once more on a fresh one
                raise
            except BaseException:  # failed, cancelled or timed out: its state is unknown
                connection.close()
                raise
            if connection.keep_alive and not connection.closed and not self._closed:
                self._idle.append(connection)
            else:
                connection.close()
            return status, body

    async def _acquire(self) -> tuple[_Connection, bool]:
        if self._closed:
            raise HttpFailure("the client is closed")
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed:
                return connection, True
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, connection = await loop.create_connection(_Connection, self._host, self._port)
        except TimeoutError:
            raise HttpFailure(f"connecting took over {self._connect_timeout:g}s") from None
        except OSError as exc:
            raise HttpFailure(f"{type(exc).__name__}: {exc}") from exc
        return connection, False

    def _encode(
        self, method: str, path: str, body: bytes, headers: Mapping[str, str] | None
    ) -> bytes:
        target = self._targets.get(path)
        if target is None:
            target = self._targets[path] = _target(path)
        head = [method.encode("ascii"), b" ", target, b" HTTP/1.1\r\n", self._fixed]
        if headers:
            head.append(
                "".join(f"{k}: {v}\r\n" for k, v in _checked(headers).items()).encode("latin-1")
            )
        if body or method not in ("GET", "HEAD"):
            head.append(b"Content-Length: %d\r\n" % len(body))
        head.append(b"\r\n")
        head.append(body)
        return b"".join(head)


def _target(path: str) -> bytes:
    """The request target of ``path``: percent-encoded where it must be, starting with ``/``."""
    if not path.startswith("/"):
        path = "/" + path
    return quote(path, safe="/:@!$&'()*+,;=-._~%?").encode("ascii")


def _checked(headers: Mapping[str, str]) -> Mapping[str, str]:
    for name, value in headers.items():
        if any(c in name for c in "\r\n: \t") or "\r" in value or "\n" in value:
            raise ValueError(f"invalid HTTP header {name!r}: {value!r}")
    return headers
