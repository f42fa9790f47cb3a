"""Request/reply on the Redis broker: what only Redis can show (its Pub/Sub inbox, its clock)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from bus.errors import ReplyLost
from bus.message import Message
from bus.options import SubscriptionOptions
from bus.redis import RedisBroker
from tests.backends.redis import RedisServer

pytestmark = pytest.mark.redis


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis(host="127.0.0.1", port=redis_server.port)
    yield client
    await client.aclose()


async def test_a_call_whose_inbox_reconnects_fails_with_reply_lost(
    redis_server: RedisServer, raw: aioredis.Redis, topic: str
) -> None:
    # Given a server that holds a call until told to answer
    taken, release = asyncio.Event(), asyncio.Event()

    async def held(message: Message) -> bytes:
        taken.set()
        await release.wait()
        return b"late"

    settings = redis_server.settings(redeliver_interval=0.5)
    async with RedisBroker(settings) as server, RedisBroker(settings) as client:
        await server.serve(topic, held, SubscriptionOptions(group="svc", processing_timeout=30))
        call = asyncio.create_task(client.request(topic, Message(data=b"x"), timeout=30))
        await asyncio.wait_for(taken.wait(), 10)
        # When the client's Pub/Sub inbox connection is killed
        killed = await raw.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        assert killed >= 1
        # Then the caller learns at once that its reply may be lost, instead of timing out
        with pytest.raises(ReplyLost):
            await asyncio.wait_for(call, 10)
        release.set()
        # And the next call, on the re-established inbox, gets its answer
        taken.clear()
        reply = await client.request(topic, Message(data=b"y"), timeout=10)
        assert reply.data == b"late"
