"""The app channel's HTTP/1.1 client against servers that answer in every way HTTP allows.

Each scenario runs on asyncio's own loop and on uvloop (the sidecar's), against a raw TCP server
whose answers the test writes byte for byte.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest
import uvloop

from runtime.channel.http1 import (
    _MAX_TARGETS,
    MAX_RESPONSE_HEAD,
    Http1Client,
    HttpFailure,
    InvalidHeader,
    encode_headers,
    request_target,
)

Answer = Callable[[bytes], Awaitable[bytes | None]]  # a request -> its answer (None: hang up)


class RawServer:
    """Reads whole requests (Content-Length bodies) and writes what ``answer`` returns."""

    def __init__(
        self, answer: Answer, *, close_after: bool = False, host: str = "127.0.0.1"
    ) -> None:
        self.answer = answer
        self.host = host
        self.close_after = close_after
        self.requests: list[bytes] = []
        self.connections = 0
        self.writers: list[asyncio.StreamWriter] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self.writers:
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                reply = await self.answer(request)
                if reply is None:
                    break
                writer.write(reply)
                await writer.drain()
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()


def ok(body: bytes = b"", status: str = "200 OK") -> bytes:
    return b"HTTP/1.1 %s\r\nContent-Length: %d\r\n\r\n%s" % (status.encode(), len(body), body)


def fixed(reply: bytes) -> Answer:
    async def answer(request: bytes) -> bytes:
        return reply

    return answer


def on_both_loops(scenario: Callable[[], Coroutine[Any, Any, None]]) -> Any:
    @pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
    def test(loop: str) -> None:
        if loop == "uvloop":
            uvloop.run(scenario())
        else:
            asyncio.run(scenario())

    test.__name__ = scenario.__name__
    test.__doc__ = scenario.__doc__
    return test


@on_both_loops
async def test_content_length_answers_reuse_one_connection() -> None:
    async def echo(request: bytes) -> bytes:
        return ok(request.partition(b"\r\n\r\n")[2].upper(), "201 Created")

    async with RawServer(echo) as server:
        client = Http1Client("127.0.0.1", server.port, headers={"dapr-api-token": "s3cret"})
        for i in range(5):
            body = f"event {i}".encode()
            assert await client.request("POST", "/orders", body, {"pubsubName": "p"}) == (
                201,
                body.upper(),
            )
        await client.close()
    assert server.connections == 1
    first = server.requests[0]
    assert first.startswith(b"POST /orders HTTP/1.1\r\n")
    for header in (b"Host: 127.0.0.1:", b"dapr-api-token: s3cret", b"pubsubName: p"):
        assert header in first
    assert b"Content-Length: 7\r\n" in first


@on_both_loops
async def test_chunked_answers_and_interim_1xx() -> None:
    chunked = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'5\r\n{"sta\r\n10\r\ntuses": [1, 2]} \r\n0\r\n\r\n'
    )
    async with RawServer(fixed(chunked)) as server:
        client = Http1Client("127.0.0.1", server.port)
        for _ in range(2):  # the connection stays usable after a chunked answer
            assert await client.request("POST", "/bulk", b"[]") == (200, b'{"statuses": [1, 2]} ')
        await client.close()
    assert server.connections == 1


@on_both_loops
async def test_answers_that_end_with_the_connection() -> None:
    """HTTP/1.0 servers (Python's http.server) close instead of framing the body."""
    reply = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end"
    async with RawServer(fixed(reply), close_after=True) as server:
        client = Http1Client("127.0.0.1", server.port)
        for _ in range(3):
            assert await client.request("POST", "orders", b"x") == (200, b"until the end")
        await client.close()
    assert server.connections == 3  # nothing was kept alive
    assert server.requests[0].startswith(b"POST /orders HTTP/1.1")  # the missing / added


@on_both_loops
async def test_an_idle_connection_closed_by_the_server_is_replaced() -> None:
    async with RawServer(fixed(ok(b"fine")), close_after=True) as server:
        # keep-alive promised, yet the server hangs up after each answer (as idle timeouts do)
        client = Http1Client("127.0.0.1", server.port)
        assert await client.request("POST", "/a", b"1") == (200, b"fine")
        await asyncio.sleep(0.05)  # the hang-up arrives while the connection is idle
        assert await client.request("POST", "/a", b"2") == (200, b"fine")
        await client.close()
    assert server.connections == 2


@on_both_loops
async def test_failures_raise_http_failure() -> None:
    async def hang_up(request: bytes) -> None:
        return None

    async with RawServer(hang_up) as server:
        client = Http1Client("127.0.0.1", server.port)
        with pytest.raises(HttpFailure, match="closed before an answer"):
            await client.request("POST", "/a", b"x")
        await client.close()

    async def half(request: bytes) -> bytes | None:
        return b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part"

    async with RawServer(half, close_after=True) as server:
        client = Http1Client("127.0.0.1", server.port)
        with pytest.raises(HttpFailure, match="mid-answer"):
            await client.request("POST", "/a", b"x")
        await client.close()

    async with RawServer(fixed(b"NOT HTTP AT ALL\r\n\r\n")) as server:
        client = Http1Client("127.0.0.1", server.port)
        with pytest.raises(HttpFailure, match="malformed"):
            await client.request("POST", "/a", b"x")
        await client.close()

    async with RawServer(fixed(ok())) as server:
        port = server.port
    client = Http1Client("127.0.0.1", port)  # nobody listens there any more
    with pytest.raises(HttpFailure, match="ConnectionRefused|Errno"):
        await client.request("POST", "/a", b"x")


@on_both_loops
async def test_a_cancelled_request_does_not_leave_its_answer_to_the_next() -> None:
    async def slow_first(request: bytes) -> bytes:
        if b"slow" in request:
            await asyncio.sleep(0.2)
            return ok(b"late answer")
        return ok(b"own answer")

    async with RawServer(slow_first) as server:
        client = Http1Client("127.0.0.1", server.port)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await client.request("POST", "/a", b"slow")
        assert await client.request("POST", "/a", b"quick") == (200, b"own answer")
        await client.close()
    assert server.connections == 2


@on_both_loops
async def test_limit_bounds_requests_in_flight() -> None:
    in_app = 0
    most = 0

    async def count(request: bytes) -> bytes:
        nonlocal in_app, most
        in_app += 1
        most = max(most, in_app)
        await asyncio.sleep(0.01)
        in_app -= 1
        return ok()

    async with RawServer(count) as server:
        client = Http1Client("127.0.0.1", server.port, limit=3)
        await asyncio.gather(*(client.request("POST", "/a", b"x") for _ in range(20)))
        await client.close()
    assert most == 3
    assert server.connections == 3


async def test_header_injection_and_odd_paths() -> None:
    with pytest.raises(ValueError, match="invalid HTTP header"):
        Http1Client("127.0.0.1", 1, headers={"dapr-api-token": "a\r\nX-Evil: 1"})
    async with RawServer(fixed(ok())) as server:
        client = Http1Client("127.0.0.1", server.port)
        with pytest.raises(ValueError, match="invalid HTTP header"):
            await client.request("POST", "/a", b"", {"bad name": "v"})
        await client.request("POST", "/orders v2/ä?x=1", b"")
        await client.request("GET", "/dapr/subscribe")
        await client.close()
    assert server.requests[0].startswith(b"POST /orders%20v2/%C3%A4?x=1 HTTP/1.1\r\n")
    assert b"Content-Length" not in server.requests[1]


async def test_ipv6_hosts_are_bracketed() -> None:
    server = RawServer(fixed(ok(b"v6")), host="::1")
    try:
        await server.__aenter__()
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    try:
        client = Http1Client("::1", server.port)
        assert await client.request("GET", "/") == (200, b"v6")
        await client.close()
    finally:
        await server.__aexit__(None, None, None)
    assert f"Host: [::1]:{server.port}\r\n".encode() in server.requests[0]


@on_both_loops
async def test_head_answers_end_with_their_headers() -> None:
    """A HEAD answer announces the length of the GET answer but carries no body."""
    async with RawServer(fixed(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")) as server:
        client = Http1Client("127.0.0.1", server.port)
        for _ in range(2):  # and the connection stays usable
            async with asyncio.timeout(5):
                status, headers, body = await client.fetch("HEAD", "/doc")
            assert (status, body) == (200, b"")
            assert headers == [(b"Content-Length", b"1234")]
        await client.close()
    assert server.connections == 1


@on_both_loops
async def test_a_drop_after_100_continue_is_not_retried() -> None:
    """The app saw the request (it answered 100): sending it again would deliver it twice."""
    second: list[bytes] = []

    async def continue_then_hang_up(request: bytes) -> bytes | None:
        if b"second" not in request:
            return ok(b"first")
        second.append(request)
        server.writers[-1].write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await server.writers[-1].drain()
        return None  # and hang up

    async with RawServer(continue_then_hang_up) as server:
        client = Http1Client("127.0.0.1", server.port)
        assert await client.request("POST", "/a", b"first") == (200, b"first")
        with pytest.raises(HttpFailure, match="mid-answer"):
            await client.request("POST", "/a", b"second")
        await client.close()
    assert len(second) == 1


@on_both_loops
async def test_idle_connections_expire() -> None:
    async with RawServer(fixed(ok(b"x"))) as server:
        client = Http1Client("127.0.0.1", server.port, idle_timeout=0.1)
        await asyncio.gather(*(client.request("POST", "/a", b"1") for _ in range(3)))
        assert client.idle_connections == 3
        async with asyncio.timeout(5):
            while client.idle_connections:
                await asyncio.sleep(0.02)
        assert await client.request("POST", "/a", b"2") == (200, b"x")  # a fresh one
        await client.close()
    assert server.connections == 4


async def test_the_target_cache_is_bounded() -> None:
    async with RawServer(fixed(ok())) as server:
        client = Http1Client("127.0.0.1", server.port)
        for i in range(_MAX_TARGETS + 10):
            client._encode("GET", f"/item/{i}", b"", None)
        assert len(client._targets) <= _MAX_TARGETS
        await client.close()


@on_both_loops
async def test_a_huge_answer_head_is_refused() -> None:
    huge = b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (MAX_RESPONSE_HEAD + 10) + b"\r\n\r\n"
    async with RawServer(fixed(huge)) as server:
        client = Http1Client("127.0.0.1", server.port)
        with pytest.raises(HttpFailure, match="headers exceed"):
            await client.request("GET", "/a")
        await client.close()


@pytest.mark.parametrize(
    "name",
    ["Content-Length", "transfer-encoding", "Host", "Connection", "TE", "Upgrade", "Expect"],
)
def test_framing_headers_of_a_caller_are_refused(name: str) -> None:
    with pytest.raises(InvalidHeader, match="client's own"):
        encode_headers({name: "1"})


@pytest.mark.parametrize(
    ("name", "value"),
    [("X-A", "1\r\nHost: evil"), ("X-A", "a\nb"), ("X-A", "a\x00b"), ("X\r\nA", "1"), ("", "1")],
)
def test_line_breaking_headers_are_refused(name: str, value: str) -> None:
    with pytest.raises(InvalidHeader, match="invalid HTTP header"):
        encode_headers([(name, value)])


def test_request_targets_pass_through_byte_exact() -> None:
    assert request_target("/a/b?x=%2F&y=a+b&z=[1]&w={}") == b"/a/b?x=%2F&y=a+b&z=[1]&w={}"
    assert request_target("orders v2/ä#frag") == b"/orders%20v2/%C3%A4%23frag"


async def test_multi_valued_answer_headers_in_order() -> None:
    reply = (
        b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nX-One: 1\r\nSet-Cookie: b=2\r\n"
        b"Content-Length: 2\r\n\r\nok"
    )
    async with RawServer(fixed(reply)) as server:
        client = Http1Client("127.0.0.1", server.port)
        status, headers, body = await client.fetch(
            "PATCH", "/x?q=1", b"{}", [("X-Multi", "1"), ("X-Multi", "2")]
        )
        await client.close()
    assert (status, body) == (200, b"ok")
    assert [v for k, v in headers if k == b"Set-Cookie"] == [b"a=1", b"b=2"]
    assert server.requests[0].startswith(b"PATCH /x?q=1 HTTP/1.1\r\n")
    assert b"X-Multi: 1\r\nX-Multi: 2\r\n" in server.requests[0]
