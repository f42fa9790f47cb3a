"""Call-mode request/reply on every backend: deadlines measured on the broker, large envelopes."""

from __future__ import annotations

import asyncio

import pytest

from bus.envelope import Envelope, Headers
from bus.errors import RequestTimeout
from bus.message import Message
from bus.options import SubscriptionOptions
from tests.conftest import MakeBroker


def one_at_a_time(group: str = "svc") -> SubscriptionOptions:
    return SubscriptionOptions(group=group, concurrency=1, batch_size=1, processing_timeout=30)


async def test_a_call_that_waited_past_its_time_to_live_is_not_run(
    make_broker: MakeBroker, topic: str
) -> None:
    # Given a server that runs one call at a time, busy with a call it holds
    server, client = await make_broker(), await make_broker()
    ran: list[bytes] = []
    busy, release = asyncio.Event(), asyncio.Event()

    async def replier(message: Message) -> bytes:
        ran.append(message.data)
        if message.data == b"first":
            busy.set()
            await release.wait()
        return message.data

    await server.serve(topic, replier, one_at_a_time())
    first = asyncio.create_task(client.request(topic, Message(data=b"first"), timeout=30))
    await asyncio.wait_for(busy.wait(), 10)
    # When a second call gives up while it waits in the broker behind the first
    with pytest.raises(RequestTimeout):
        await client.request(topic, Message(data=b"second"), timeout=0.5)
    release.set()
    assert (await first).data == b"first"
    # Then the server skips it: a third call, served after it, is the next one to run
    assert (await client.request(topic, Message(data=b"third"), timeout=10)).data == b"third"
    assert ran == [b"first", b"third"]


@pytest.mark.parametrize("mib", [4, 8])
async def test_http_sized_envelopes_go_both_ways(
    make_broker: MakeBroker, topic: str, mib: int
) -> None:
    server, client = await make_broker(), await make_broker()
    body = bytes(range(256)) * (mib * 4096)
    assert len(body) == mib * 1024 * 1024

    async def echo(message: Message) -> bytes:
        request = Envelope.decode(message.data)
        reply = Envelope(status=200, headers=request.headers, body=request.body[::-1])
        return reply.encode()

    await server.serve(topic, echo, SubscriptionOptions(group="svc", processing_timeout=60))
    headers = Headers([("Content-Type", "application/octet-stream"), ("X-Many", "a")])
    headers.add("x-many", "b")
    request = Envelope(status=0, headers=headers, body=body)
    reply = await client.request(topic, Message(data=request.encode()), timeout=60)
    answer = Envelope.decode(reply.data)
    assert answer.status == 200 and answer.body == body[::-1]
    assert answer.headers.get_all("X-MANY") == ["a", "b"]
