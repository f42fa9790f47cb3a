"""A small pooled HTTP/1.1 client: what the app channel needs, at a quarter of aiohttp's cost.

Every delivery is one POST into the app, so the client is on the subscriber's hot path.  aiohttp
spent ~180 µs of CPU per sequential POST on this machine (URL objects, header multidicts, a
payload writer, a response object with its streams); this client spends ~50 µs: it writes the
request in one ``transport.write`` and lets ``httptools`` (already installed with uvicorn) parse
the answer straight from ``data_received``.

What it does, and all it does:

- any method; the request target (path and raw query) is sent as given, only bytes HTTP forbids
  there (controls, space, ``#``, non-ASCII) percent-encoded;
- keep-alive connections to one ``host:port``, reused LIFO; ``limit`` > 0 bounds the requests in
  flight (the rest wait), like ``--app-max-concurrency``; a connection idle for
  ``idle_timeout`` is closed (apps and proxies drop idle ones too, and an idle socket is a file
  descriptor held for nothing);
- bodies framed by ``Content-Length``, ``Transfer-Encoding: chunked`` or, for HTTP/1.0-style
  answers, the end of the connection; the answer to ``HEAD`` has no body whatever its
  ``Content-Length`` says; interim ``1xx`` answers are skipped;
- every response header, in order and repeated as sent (two ``Set-Cookie`` stay two); the head
  of an answer is bounded by :data:`MAX_RESPONSE_HEAD`, its body by :data:`MAX_RESPONSE_BODY`;
- a reused connection the server closed while idle (not one byte of the answer arrived, not
  even a ``100 Continue``) is replaced once by a fresh one; every other failure raises
  :class:`HttpFailure`, so a request the app may have seen is never sent twice;
- a request cancelled or timed out by its caller closes its connection (its answer would
  otherwise be read by the next request);
- it writes ``Host`` and ``Content-Length`` itself and refuses (:class:`InvalidHeader`) a
  caller's header that frames the message or manages the connection, and any name or value
  that could split a header line (CR, LF, NUL), so no caller can smuggle a second request.

No redirects, cookies, TLS, compression or proxies: the app listens on a local plain port.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterable, Mapping
from typing import cast

import httptools

from bus.errors import InvalidArgument, OmnibusError

MAX_RESPONSE_BODY = 64 * 1024 * 1024  # bytes an app may answer with
MAX_RESPONSE_HEAD = 64 * 1024  # bytes of status line and headers (Node's default is 16 KiB)
IDLE_TIMEOUT = 30.0  # seconds a pooled connection may stay unused
_MAX_TARGETS = 1024  # encoded request targets remembered (the routes of the subscriptions)

# Headers the client writes itself or that change how the message is framed or the connection
# is used: a caller's copy could make the app read a different request than the one we sent.
FRAMING_HEADERS = frozenset(
    {
        "content-length",
        "transfer-encoding",
        "host",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "expect",
        "proxy-connection",
    }
)
_COMMON_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_BAD_VALUE = re.compile(r"[\r\n\x00]")
_BAD_TARGET = re.compile(rb"[\x00-\x20\x23\x7f-\xff]")  # controls, space, '#', non-ASCII

Response = tuple[int, list[tuple[bytes, bytes]], bytes]
HeaderPairs = Mapping[str, str] | Iterable[tuple[str, str]]


class HttpFailure(OmnibusError):
    """The request got no complete answer: refused, reset, closed, malformed or too large."""


class InvalidHeader(InvalidArgument):
    """A caller's header cannot be written: it frames the message or would split a line."""


class _Stale(HttpFailure):
    """A reused connection was closed by the server before any byte of the answer."""


class _Connection(asyncio.Protocol):
    """One TCP connection; one request at a time."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[Response] | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._size = 0
        self._head_size = 0  # bytes received while the head was incomplete
        self._header_bytes = 0  # bytes of the headers parsed
        self._received = False  # a byte of the current exchange arrived (a 1xx included)
        self._headers_done = False
        self._framed = False  # the answer has a Content-Length or is chunked
        self._head = False  # the request is a HEAD: the answer ends with its headers
        self.closed = False
        self.keep_alive = False
        self.idle_since = 0.0

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self._received = True
        if not self._headers_done:
            self._head_size += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(HttpFailure(f"malformed answer: {exc}"))
            self.close()
            return
        if not self._headers_done and self._head_size > MAX_RESPONSE_HEAD:
            self._fail(HttpFailure(f"the answer's headers exceed {MAX_RESPONSE_HEAD} bytes"))
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
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > MAX_RESPONSE_HEAD:
            self._fail(HttpFailure(f"the answer's headers exceed {MAX_RESPONSE_HEAD} bytes"))
            raise HttpFailure("stop parsing")  # feed_data raises; data_received closes
        self._headers.append((name, value))
        lowered = name.lower()
        if lowered == b"content-length" or (
            lowered == b"transfer-encoding" and b"chunked" in value.lower()
        ):
            self._framed = True

    def on_headers_complete(self) -> None:
        self._headers_done = True
        if self._head and self._parser.get_status_code() >= 200:
            # llhttp does not know the request was HEAD and would wait for Content-Length
            # bytes that never come: the answer ends here, and a new parser reads the next.
            self.keep_alive = self._parser.should_keep_alive()
            self._complete()
            self._parser = httptools.HttpResponseParser(self)

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
            self._reset_message()
            return
        self.keep_alive = self._parser.should_keep_alive()
        self._complete()

    # -- the request -------------------------------------------------------------------------

    async def exchange(self, request: bytes, *, head: bool = False) -> Response:
        """Send ``request``; the status, headers and body of its answer."""
        if self.closed or self._transport is None or self._transport.is_closing():
            raise _Stale("the connection is closed")
        self._reset_message()
        self._received = False
        self._head = head
        self.keep_alive = False
        waiter: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
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

    def _reset_message(self) -> None:
        self._headers, self._body = [], []
        self._size = self._head_size = self._header_bytes = 0
        self._headers_done = self._framed = False

    def _complete(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            status = self._parser.get_status_code()
            self._waiter.set_result((status, self._headers, b"".join(self._body)))

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
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self._host = host
        self._port = port
        self._connect_timeout = connect_timeout
        self._idle_timeout = idle_timeout
        self._idle: list[_Connection] = []
        self._sweeper: asyncio.TimerHandle | None = None
        self._limit = asyncio.Semaphore(limit) if limit > 0 else None
        self._closed = False
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"  # IPv6 in brackets
        fixed = encode_headers(headers or {})
        self._fixed = b"Host: " + authority.encode("ascii") + b"\r\n" + fixed
        self._targets: dict[str, bytes] = {}

    @property
    def idle_connections(self) -> int:
        """Pooled connections waiting for a request."""
        return len(self._idle)

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: HeaderPairs | None = None
    ) -> tuple[int, bytes]:
        """Send one request; its status and body, or :class:`HttpFailure`."""
        status, _, answer = await self.fetch(method, path, body, headers)
        return status, answer

    async def fetch(
        self, method: str, target: str, body: bytes = b"", headers: HeaderPairs | None = None
    ) -> Response:
        """Send one request; its status, raw header pairs and body, or :class:`HttpFailure`."""
        data = self._encode(method, target, body, headers)
        head = method == "HEAD"
        if self._limit is None:
            return await self._send(data, head)
        async with self._limit:
            return await self._send(data, head)

    async def close(self) -> None:
        """Close the idle connections; those in use close when their request ends."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    async def _send(self, data: bytes, head: bool) -> Response:
        while True:
            connection, reused = await self._acquire()
            try:
                answer = await connection.exchange(data, head=head)
            except _Stale:
                connection.close()
                if reused:
                    continue  # closed by the server while idle: once more on a fresh one
                raise
            except BaseException:  # failed, cancelled or timed out: its state is unknown
                connection.close()
                raise
            self._release(connection)
            return answer

    def _release(self, connection: _Connection) -> None:
        if not connection.keep_alive or connection.closed or self._closed:
            connection.close()
            return
        connection.idle_since = time.monotonic()
        self._idle.append(connection)
        if self._sweeper is None:
            loop = asyncio.get_running_loop()
            self._sweeper = loop.call_later(self._idle_timeout, self._sweep)

    def _sweep(self) -> None:
        """Close the connections idle for longer than the idle time-out (oldest first)."""
        self._sweeper = None
        deadline = time.monotonic() - self._idle_timeout
        expired = 0
        while expired < len(self._idle) and self._idle[expired].idle_since <= deadline:
            self._idle[expired].close()
            expired += 1
        del self._idle[:expired]
        if self._idle:
            wait = self._idle[0].idle_since + self._idle_timeout - time.monotonic()
            self._sweeper = asyncio.get_running_loop().call_later(max(wait, 0.01), self._sweep)

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

    def _encode(self, method: str, target: str, body: bytes, headers: HeaderPairs | None) -> bytes:
        if method not in _COMMON_METHODS and not _TOKEN.fullmatch(method):
            raise InvalidHeader(f"invalid HTTP method {method!r}")
        encoded = self._targets.get(target)
        if encoded is None:
            encoded = request_target(target)
            if len(self._targets) >= _MAX_TARGETS:
                self._targets.clear()  # many distinct targets (invocation): none is hot
            self._targets[target] = encoded
        head = [method.encode("ascii"), b" ", encoded, b" HTTP/1.1\r\n", self._fixed]
        if headers:
            head.append(encode_headers(headers))
        if body or method not in ("GET", "HEAD"):
            head.append(b"Content-Length: %d\r\n" % len(body))
        head.append(b"\r\n")
        head.append(body)
        return b"".join(head)


def request_target(target: str) -> bytes:
    """The request target of ``target``, starting with ``/``; bytes HTTP allows kept as given."""
    raw = target.encode("utf-8", "surrogateescape")
    if not raw.startswith(b"/"):
        raw = b"/" + raw
    return _BAD_TARGET.sub(lambda m: b"%%%02X" % m.group()[0], raw)


def encode_headers(headers: HeaderPairs) -> bytes:
    """``name: value`` lines of a caller's headers; :class:`InvalidHeader` for any it must not
    send (framing and connection headers, a name that is not a token, CR/LF/NUL in a value)."""
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    lines: list[str] = []
    for name, value in pairs:
        if not _TOKEN.fullmatch(name) or _BAD_VALUE.search(value):
            raise InvalidHeader(f"invalid HTTP header {name!r}: {value!r}")
        if name.lower() in FRAMING_HEADERS:
            raise InvalidHeader(f"the {name} header is the client's own to write")
        lines.append(f"{name}: {value}\r\n")
    try:
        return "".join(lines).encode("latin-1")
    except UnicodeEncodeError:
        raise InvalidHeader("a header value is not Latin-1 text") from None
