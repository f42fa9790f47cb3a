"""Request/reply, presence and argument checking, on every backend."""

from __future__ import annotations

import asyncio

import pytest

from bus.errors import InvalidArgument, InvalidName, NoResponders, RequestTimeout
from bus.message import Message
from bus.options import RetryPolicy, SubscriptionOptions
from bus.presence import Presence
from tests.conftest import MakeBroker
from tests.helpers import Collector, eventually


def service(group: str = "svc") -> SubscriptionOptions:
    return SubscriptionOptions(group=group, concurrency=20, processing_timeout=5.0)


async def upper(message: Message) -> bytes:
    return message.data.upper()


async def test_request_gets_the_reply(make_broker: MakeBroker, topic: str) -> None:
    server, client = await make_broker(), await make_broker()
    await server.serve(topic, upper, service())
    reply = await client.request(topic, Message(data=b"hello"), timeout=10)
    assert reply.data == b"HELLO"


async def test_many_requests_in_flight_at_once(make_broker: MakeBroker, topic: str) -> None:
    server, client = await make_broker(), await make_broker()

    async def slow_echo(message: Message) -> bytes:
        await asyncio.sleep(0.2)
        return message.data

    await server.serve(topic, slow_echo, service())
    payloads = [f"req-{i}".encode() for i in range(50)]
    started = asyncio.get_running_loop().time()
    replies = await asyncio.gather(
        *(client.request(topic, Message(data=p), timeout=15) for p in payloads)
    )
    assert [r.data for r in replies] == payloads
    # 50 calls of 0.2 s each with 20 handlers at once: far less than 50 x 0.2 s
    assert asyncio.get_running_loop().time() - started < 5


async def test_replicas_of_a_group_share_requests(make_broker: MakeBroker, topic: str) -> None:
    first, second, client = await make_broker(), await make_broker(), await make_broker()
    served: dict[str, int] = {"first": 0, "second": 0}

    def replica(name: str):  # type: ignore[no-untyped-def]
        async def handle(message: Message) -> bytes:
            served[name] += 1
            await asyncio.sleep(0.01)
            return name.encode()

        return handle

    await first.serve(topic, replica("first"), service())
    await second.serve(topic, replica("second"), service())
    await asyncio.gather(
        *(client.request(topic, Message(data=b"x"), timeout=15) for _ in range(200))
    )
    assert served["first"] + served["second"] >= 200
    assert served["first"] > 0 and served["second"] > 0


async def test_request_times_out(make_broker: MakeBroker, topic: str) -> None:
    server, client = await make_broker(), await make_broker()

    async def never(message: Message) -> bytes:
        await asyncio.sleep(30)
        return b""

    await server.serve(topic, never, service())
    with pytest.raises(RequestTimeout):
        await client.request(topic, Message(data=b"x"), timeout=0.5)


async def test_no_responders_fails_at_once(make_broker: MakeBroker, topic: str) -> None:
    client = await make_broker()
    started = asyncio.get_running_loop().time()
    with pytest.raises(NoResponders):
        await client.request(topic, Message(data=b"x"), timeout=30)
    assert asyncio.get_running_loop().time() - started < 2


async def test_stopped_server_is_no_longer_a_responder(make_broker: MakeBroker, topic: str) -> None:
    server, client = await make_broker(), await make_broker()
    subscription = await server.serve(topic, upper, service())
    assert (await client.request(topic, Message(data=b"a"), timeout=10)).data == b"A"
    await subscription.stop()
    other = await make_broker()
    with pytest.raises(NoResponders):
        await other.request(topic, Message(data=b"x"), timeout=10)


async def test_presence_is_seen_by_others_and_withdrawn(
    make_broker: MakeBroker, topic: str
) -> None:
    a, b = await make_broker(), await make_broker()
    entry = Presence(
        name=topic, instance=a.instance, address="127.0.0.1:3500", metadata={"app": "orders"}
    )
    await a.announce(entry)
    [seen] = await b.instances(topic)
    assert (seen.name, seen.instance, seen.address) == (topic, a.instance, "127.0.0.1:3500")
    assert dict(seen.metadata) == {"app": "orders"}
    assert any(p.name == topic for p in await b.instances())
    await a.withdraw(entry)
    assert await b.instances(topic) == []


async def test_closing_a_broker_withdraws_its_presence(make_broker: MakeBroker, topic: str) -> None:
    a, b = await make_broker(), await make_broker()
    await a.announce(Presence(name=topic, instance=a.instance))
    await eventually(lambda: b.instances(topic), timeout=5)
    await a.close()
    assert await b.instances(topic) == []


# -- bad arguments raise our own clear errors -----------------------------------------------


async def test_bad_arguments_raise_clear_errors(make_broker: MakeBroker, topic: str) -> None:
    broker = await make_broker()
    with pytest.raises(InvalidName):
        await broker.publish("", [Message(data=b"x")])
    with pytest.raises(InvalidName):
        await broker.publish("has space", [Message(data=b"x")])
    with pytest.raises(InvalidName):
        await broker.subscribe("*", Collector(), SubscriptionOptions(group="g"))
    with pytest.raises(InvalidName):
        SubscriptionOptions(group="bad group!")
    with pytest.raises(InvalidName):
        SubscriptionOptions(group="")
    with pytest.raises(InvalidArgument):
        Message(data="text")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        await broker.publish(topic, Message(data=b"x"))  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        await broker.request(topic, Message(data=b"x"), timeout=-1)
    with pytest.raises(InvalidArgument):
        SubscriptionOptions(group="g", processing_timeout=-1)
    with pytest.raises(InvalidArgument):
        RetryPolicy(max_attempts=0)
    with pytest.raises(InvalidArgument):
        RetryPolicy(initial_interval=-1)


async def test_browse_shows_held_messages_without_delivering(
    make_broker: MakeBroker, topic: str
) -> None:
    broker = await make_broker()
    sent = [Message(data=f"dead{i}".encode(), metadata={"i": str(i)}) for i in range(3)]
    await broker.publish(topic, sent)
    browsed = await broker.browse(topic, limit=10)
    assert [m.id for m in browsed] == [m.id for m in sent]
    assert [m.data for m in browsed] == [m.data for m in sent]
    assert [m.id for m in await broker.browse(topic, limit=2)] == [m.id for m in sent[:2]]
    # browsing consumed nothing: a subscriber still gets all three
    collector = Collector()
    await broker.subscribe(topic, collector, service())
    await collector.wait_for(3)
