"""The lean Redis connections of bus.redis.link: replies stay with their callers; losses show."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from bus.errors import BrokerClosed, BrokerError, BrokerUnavailable
from bus.redis.link import RedisLink, RedisListener
from bus.redis.settings import RedisAddress
from tests.backends.redis import RedisServer, free_port
from tests.helpers import eventually

pytestmark = pytest.mark.redis


@pytest.fixture
def address(redis_server: RedisServer) -> RedisAddress:
    return RedisAddress(host="127.0.0.1", port=redis_server.port)


def key() -> str:
    return f"test-link-{uuid.uuid4().hex[:10]}"


async def test_concurrent_callers_each_get_their_own_replies(address: RedisAddress) -> None:
    # Given one link and many callers at once, each incrementing its own counter n times
    link = RedisLink(address, timeout=5)
    keys = [key() for _ in range(50)]

    async def caller(name: str, n: int) -> list[int]:
        got = []
        for _ in range(n):
            [reply] = await link.run([("INCR", name)])
            got.append(reply)
        return got

    try:
        results = await asyncio.gather(*(caller(k, i + 1) for i, k in enumerate(keys)))
    finally:
        await link.close()
    # Then every caller saw exactly its own counter go 1..n, never another caller's value
    assert results == [list(range(1, i + 2)) for i in range(50)]


async def test_an_error_reply_takes_its_command_s_place_only(address: RedisAddress) -> None:
    link = RedisLink(address, timeout=5)
    name = key()
    try:
        replies = await link.run([("SET", name, "x"), ("INCR", name), ("GET", name)])
    finally:
        await link.close()
    assert replies[0] == b"OK"
    assert isinstance(replies[1], ResponseError)
    assert replies[2] == b"x"


async def test_a_caller_that_gives_up_does_not_shift_the_replies_of_the_next(
    address: RedisAddress, raw: aioredis.Redis
) -> None:
    # Given a caller blocked on a list with nothing in it, then cancelled
    link = RedisLink(address, timeout=5)
    name, other = key(), key()
    blocked = asyncio.create_task(link.run([("BLPOP", name, 1)]))
    await asyncio.sleep(0.1)
    blocked.cancel()
    # When the next caller asks for a value
    await raw.set(other, b"mine")
    try:
        [reply] = await link.run([("GET", other)])
    finally:
        await link.close()
    # Then it gets its own reply, not the cancelled BLPOP's nil
    assert reply == b"mine"


async def test_a_lost_connection_fails_waiters_and_the_next_command_reconnects(
    address: RedisAddress, raw: aioredis.Redis
) -> None:
    link = RedisLink(address, timeout=5, retries=0)
    name = key()
    try:
        [client_id] = await link.run([("CLIENT", "ID")])
        waiting = asyncio.create_task(link.run([("BLPOP", name, 5)]))
        await asyncio.sleep(0.1)
        # When the server drops the link's connection
        assert await raw.execute_command("CLIENT", "KILL", "ID", client_id) == 1
        # Then the waiting caller learns at once, instead of waiting for its time-out
        with pytest.raises(BrokerUnavailable):
            await asyncio.wait_for(waiting, 3)
        # And the next command runs on a new connection
        assert await link.run([("PING",)]) == [b"PONG"]
    finally:
        await link.close()


async def test_a_lost_connection_is_retried_when_asked(
    address: RedisAddress, raw: aioredis.Redis
) -> None:
    link = RedisLink(address, timeout=5, retries=2)
    name = key()
    try:
        [client_id] = await link.run([("CLIENT", "ID")])
        waiting = asyncio.create_task(link.run([("BLPOP", name, 2)]))
        await asyncio.sleep(0.1)
        assert await raw.execute_command("CLIENT", "KILL", "ID", client_id) == 1
        await raw.rpush(name, b"v")
        # the BLPOP is sent again on a new connection and finds the value pushed meanwhile
        assert await asyncio.wait_for(waiting, 5) == [[name.encode(), b"v"]]
    finally:
        await link.close()


async def test_an_unreachable_server_is_broker_unavailable() -> None:
    link = RedisLink(RedisAddress(host="127.0.0.1", port=free_port(), dial_timeout=1), timeout=1)
    with pytest.raises(BrokerUnavailable):
        await link.run([("PING",)])
    await link.close()
    with pytest.raises(BrokerClosed):
        await link.run([("PING",)])


async def test_login_and_database(redis_server: RedisServer, raw: aioredis.Redis) -> None:
    # Given a user of its own on the private server
    user, password = f"u{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    await raw.execute_command("ACL", "SETUSER", user, "on", f">{password}", "~*", "&*", "+@all")
    try:
        good = RedisAddress("127.0.0.1", redis_server.port, user, password, db=3)
        link = RedisLink(good, timeout=5)
        name = key()
        try:
            await link.run([("SET", name, "in-db-3")])
        finally:
            await link.close()
        db3 = aioredis.Redis(host="127.0.0.1", port=redis_server.port, db=3)
        try:
            assert await db3.get(name) == b"in-db-3"
            await db3.delete(name)
        finally:
            await db3.aclose()
        assert await raw.get(name) is None
        # And a wrong password is refused with a clear error
        bad = RedisLink(RedisAddress("127.0.0.1", redis_server.port, user, "wrong"), timeout=5)
        with pytest.raises(BrokerError, match="refused the login"):
            await bad.run([("PING",)])
        await bad.close()
    finally:
        await raw.execute_command("ACL", "DELUSER", user)


async def test_the_listener_delivers_and_reports_a_loss_and_the_return(
    address: RedisAddress, raw: aioredis.Redis
) -> None:
    channel = f"test-listen-{uuid.uuid4().hex[:8]}"
    name = f"listener-{uuid.uuid4().hex[:8]}"
    received: list[bytes] = []
    events: list[str] = []
    listener = RedisListener(
        address, channel, received.append, events.append, timeout=5, client_name=name
    )
    await listener.start()
    try:
        assert listener.connected
        await raw.publish(channel, b"one")
        await eventually(lambda: received == [b"one"])
        # When the server drops the Pub/Sub connection
        clients = (await raw.execute_command("CLIENT", "LIST", "TYPE", "pubsub")).decode()
        ids = [
            c.split()[0].removeprefix("id=") for c in clients.splitlines() if f"name={name} " in c
        ]
        assert len(ids) == 1
        assert await raw.execute_command("CLIENT", "KILL", "ID", ids[0]) == 1
        # Then the listener reports the loss, comes back, and says so
        await eventually(lambda: len(events) == 2)
        assert "lost" in events[0] and "re-established" in events[1]
        await listener.wait_connected(5)
        await raw.publish(channel, b"two")
        await eventually(lambda: received == [b"one", b"two"])
    finally:
        await listener.close()
