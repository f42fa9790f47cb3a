"""Request/reply on the RabbitMQ broker: its direct reply-to inbox and transient calls."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import aiormq
import pytest

from bus.errors import ReplyLost
from bus.message import Message
from bus.options import SubscriptionOptions
from bus.rabbitmq import RabbitBroker, RabbitSettings
from bus.rabbitmq._wire import properties
from tests.backends import missing_service
from tests.backends.rabbitmq import RABBITMQ_URL, delete_topology, rabbitmq_reachable
from tests.helpers import eventually


def test_a_call_is_transient_and_expires_with_its_caller() -> None:
    settings = RabbitSettings(url=RABBITMQ_URL)
    call = properties(Message(data=b"x"), "amq.rabbitmq.reply-to", settings, ttl=1.5)
    assert (call.delivery_mode, call.expiration) == (1, "1500")
    published = properties(Message(data=b"x"), None, settings)
    assert (published.delivery_mode, published.expiration) == (2, None)


@pytest.fixture
async def pair() -> AsyncIterator[tuple[RabbitBroker, RabbitBroker]]:
    if not rabbitmq_reachable():
        missing_service("RabbitMQ is not reachable at 127.0.0.1:5672")
    settings = RabbitSettings(url=RABBITMQ_URL, reconnect_wait=0.2)
    server, client = RabbitBroker(settings), RabbitBroker(settings)
    await server.connect()
    await client.connect()
    yield server, client
    await client.close()
    await server.close()
    made = (server, client)
    queues = {q for b in made for q in b.declared_queues}
    exchanges = {e for b in made for e in b.declared_exchanges}
    assert not await delete_topology(RABBITMQ_URL, queues, exchanges)


@pytest.mark.rabbitmq
async def test_a_call_whose_reply_channel_closes_fails_with_reply_lost(
    pair: tuple[RabbitBroker, RabbitBroker],
) -> None:
    server, client = pair
    topic = f"t.{uuid.uuid4().hex[:12]}"
    # Given a server that holds a call until told to answer
    taken, release = asyncio.Event(), asyncio.Event()

    async def held(message: Message) -> bytes:
        taken.set()
        await release.wait()
        return b"late"

    await server.serve(topic, held, SubscriptionOptions(group="svc", processing_timeout=30))
    call = asyncio.create_task(client.request(topic, Message(data=b"x"), timeout=30))
    await asyncio.wait_for(taken.wait(), 10)
    # When RabbitMQ closes the client's reply channel (here: a channel error on it)
    channel = client._inbox_channel
    assert channel is not None
    with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity):
        await channel.declare_queue(f"absent-{uuid.uuid4().hex}", passive=True)
    # Then the caller learns at once that its reply is lost, instead of timing out
    with pytest.raises(ReplyLost):
        await asyncio.wait_for(call, 10)
    release.set()
    # And the next call, on the reopened channel, gets its answer
    await eventually(lambda: not channel.is_closed)
    reply = await client.request(topic, Message(data=b"y"), timeout=10)
    assert reply.data == b"late"


@pytest.mark.rabbitmq
async def test_beats_reach_only_the_brokers_that_look_the_name_up(
    pair: tuple[RabbitBroker, RabbitBroker],
) -> None:
    server, client = pair
    topic = f"t.{uuid.uuid4().hex[:12]}"
    bystander = RabbitBroker(RabbitSettings(url=RABBITMQ_URL))
    await bystander.connect()
    try:
        # Given a served topic that one broker looks up and another never asks about
        await server.serve(topic, _echo, SubscriptionOptions(group="svc"))
        [entry] = await client.instances(topic)
        assert entry.instance == server.instance
        # When the server beats again
        await server._beat(list(server._announced.values()))
        await client.instances(topic)
        # Then the bystander's table never held it: no beat was routed to it
        assert bystander._board()._entries == {}
        # And a withdrawal is seen at once by the server itself
        await server.withdraw(entry)
        assert await server.instances(topic) == []
    finally:
        await bystander.close()


async def _echo(message: Message) -> bytes:
    return message.data


@pytest.mark.rabbitmq
async def test_a_broker_still_looks_up_names_after_the_last_announcer_left() -> None:
    # Given a broker that announces a name and one that has only connected
    if not rabbitmq_reachable():
        missing_service("RabbitMQ is not reachable at 127.0.0.1:5672")
    settings = RabbitSettings(url=RABBITMQ_URL, reconnect_wait=0.2)
    announcer, looker = RabbitBroker(settings), RabbitBroker(settings)
    name = f"t.{uuid.uuid4().hex[:12]}"
    try:
        await announcer.connect()
        await looker.connect()
        await announcer.serve(name, _echo, SubscriptionOptions(group="svc"))
        # When the announcer leaves (its bindings, perhaps the presence exchange's last, go)
        await announcer.close()
        # Then the other broker's first lookup binds without meeting a deleted exchange
        assert await looker.instances(name) == []
    finally:
        await looker.close()
        await announcer.close()
        made = (announcer, looker)
        queues = {q for b in made for q in b.declared_queues}
        exchanges = {e for b in made for e in b.declared_exchanges}
        assert not await delete_topology(RABBITMQ_URL, queues, exchanges)
