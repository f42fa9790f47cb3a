"""413 for a body over the limit, read by ordinary clients over a real socket.

urllib and requests send the whole body before they read the answer, and ask for
``Connection: close``: a server that answers early and closes with unread data resets the
connection, and they see ``ConnectionResetError`` instead of the 413.
"""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator

import orjson
import pytest
import requests

from bus.memory import MemoryBroker, MemoryHub
from runtime.api.app import SidecarState, build_app
from runtime.pubsub.components import PubSubs
from tests.runtime_asgi import Component, served

LIMIT = 1024 * 1024
BIG = 8 * 1024 * 1024 + 7


@pytest.fixture
async def base_url() -> AsyncIterator[str]:
    broker = MemoryBroker(MemoryHub())
    pubsubs = PubSubs([Component("pubsub", broker)])
    await pubsubs.connect()
    state = SidecarState(app_id="checkout", pubsubs=pubsubs, api_ready=True)
    async with served(build_app(state, max_body_size=LIMIT)) as port:
        yield f"http://127.0.0.1:{port}/v1.0/publish/pubsub/t"
    await pubsubs.close()


def _chunks(size: int) -> Iterator[bytes]:
    piece = b"x" * 65536
    while size > 0:
        yield piece[:size]
        size -= len(piece)


def _urllib(url: str, chunked: bool) -> tuple[int, bytes]:
    data: bytes | Iterator[bytes] = _chunks(BIG) if chunked else b"x" * BIG
    headers = {"content-type": "text/plain"}
    if chunked:
        headers["transfer-encoding"] = "chunked"
    request = urllib.request.Request(url, data=data, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _requests(url: str, chunked: bool) -> tuple[int, bytes]:
    data = _chunks(BIG) if chunked else b"x" * BIG
    answer = requests.post(url, data=data, headers={"content-type": "text/plain"}, timeout=30)
    return answer.status_code, answer.content


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("client", [_urllib, _requests], ids=["urllib", "requests"])
async def test_ordinary_clients_read_the_413(base_url: str, client: object, chunked: bool) -> None:
    assert callable(client)
    status, body = await asyncio.to_thread(client, base_url, chunked)
    assert status == 413
    assert orjson.loads(body)["errorCode"] == "ERR_BODY_TOO_LARGE"
    status, _ = await asyncio.to_thread(_small, base_url)
    assert status == 204  # and the sidecar keeps serving


def _small(url: str) -> tuple[int, bytes]:
    answer = requests.post(url, data=b"fine", headers={"content-type": "text/plain"}, timeout=10)
    return answer.status_code, answer.content
