"""Request/reply on the Redis broker: what only Redis can show (its Pub/Sub inbox, its clock)."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis

from bus.errors import BrokerError, ReplyLost, RequestTimeout
from bus.message import Message
from bus.options import SubscriptionOptions
from bus.redis import RedisBroker
from tests.backends.redis import RedisServer

pytestmark = pytest.mark.redis


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


@pytest.mark.parametrize("step", [3600.0, -3600.0])
async def test_a_step_of_the_wall_clock_neither_expires_nor_revives_calls(
    redis_server: RedisServer, topic: str, monkeypatch: pytest.MonkeyPatch, step: float
) -> None:
    # Given a server and a client connected while the clock was right
    async def echo(message: Message) -> bytes:
        return message.data

    settings = redis_server.settings()
    async with RedisBroker(settings) as server, RedisBroker(settings) as client:
        await server.serve(topic, echo, SubscriptionOptions(group="svc"))
        assert (await client.request(topic, Message(data=b"before"), timeout=5)).data == b"before"
        # When this host's wall clock steps an hour (NTP, a resumed VM)
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() + step)
        # Then a call within its time-out is still answered, at once
        started = time.monotonic()
        reply = await client.request(topic, Message(data=b"after"), timeout=5)
        assert reply.data == b"after"
        assert time.monotonic() - started < 1.0


async def test_a_call_that_waited_past_its_time_out_is_not_run(
    redis_server: RedisServer, raw: aioredis.Redis, topic: str
) -> None:
    # Given a call published while nobody serves its topic, whose caller gives up after 0.3 s
    ran: list[bytes] = []

    async def work(message: Message) -> bytes:
        ran.append(message.data)
        return b"done"

    settings = redis_server.settings()
    async with RedisBroker(settings) as server, RedisBroker(settings) as client:
        subscription = await server.serve(topic, work, SubscriptionOptions(group="svc"))
        await subscription.stop()  # the consumer group exists, nobody reads it
        client._responders_seen[topic] = time.monotonic() + 60  # presence still says "up"
        with pytest.raises(RequestTimeout):
            await client.request(topic, Message(data=b"late"), timeout=0.3)
        await asyncio.sleep(0.2)
        # When a server starts reading the topic after the caller gave up
        await server.serve(topic, work, SubscriptionOptions(group="svc"))
        assert (await client.request(topic, Message(data=b"fresh"), timeout=5)).data == b"done"
        # Then the stale call was skipped and only the fresh one ran
        assert ran == [b"fresh"]


async def test_a_call_redis_refuses_fails_at_once_not_after_its_time_out(
    redis_server: RedisServer, raw: aioredis.Redis, topic: str
) -> None:
    # Given a topic key that is not a stream (XADD answers WRONGTYPE), believed served
    await raw.set(topic, b"not a stream")
    async with RedisBroker(redis_server.settings()) as client:
        client._responders_seen[topic] = time.monotonic() + 60
        # When a call is made with a long time-out
        started = time.monotonic()
        with pytest.raises(BrokerError, match="WRONGTYPE"):
            await client.request(topic, Message(data=b"x"), timeout=10)
        # Then the refusal reaches the caller at once, and its inbox keeps nothing
        assert time.monotonic() - started < 2.0
        assert client._inbox is not None and client._inbox.waiting == 0
    await raw.delete(topic)
