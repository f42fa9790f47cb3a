"""Request/reply, presence and argument checking, on every backend."""

from __future__ import annotations

import asyncio

import pytest

from bus.envelope import Envelope, Headers
from bus.errors import (
    InvalidArgument,
    InvalidName,
    NoResponders,
    RemoteError,
    RequestTimeout,
)
from bus.message import Message
from bus.options import RetryPolicy, SubscriptionOptions
from bus.presence import SERVICE, Presence
from bus.rpc import ERROR_KEY, REDELIVERED, RequestMode
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
    # exactly once each: a call is at most once, and every one of them was answered
    assert served["first"] + served["second"] == 200
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


# -- call mode: error replies, at most once, in-process, HTTP-shaped envelopes ------------------


class Refused(Exception):
    code = "REFUSED"


async def test_a_replier_that_raises_answers_with_an_error_at_once(
    make_broker: MakeBroker, topic: str
) -> None:
    server, client = await make_broker(), await make_broker()
    calls = 0

    async def failing(message: Message) -> bytes:
        nonlocal calls
        calls += 1
        raise Refused("not today")

    await server.serve(topic, failing, service())
    started = asyncio.get_running_loop().time()
    with pytest.raises(RemoteError) as caught:
        await client.request(topic, Message(data=b"x"), timeout=20)
    assert (caught.value.code, caught.value.message) == ("REFUSED", "not today")
    assert asyncio.get_running_loop().time() - started < 5  # not after a time-out
    assert calls == 1  # not retried


async def test_an_unexpected_error_is_an_internal_error_reply(
    make_broker: MakeBroker, topic: str
) -> None:
    server, client = await make_broker(), await make_broker()

    async def broken(message: Message) -> bytes:
        raise RuntimeError("boom")

    await server.serve(topic, broken, service())
    with pytest.raises(RemoteError) as caught:
        await client.request(topic, Message(data=b"x"), timeout=20)
    assert caught.value.code == "INTERNAL"


async def test_two_groups_serving_one_topic_never_both_run_a_call(
    make_broker: MakeBroker, topic: str
) -> None:
    first, second, client = await make_broker(), await make_broker(), await make_broker()
    runs: list[str] = []

    def server(name: str):  # type: ignore[no-untyped-def]
        async def handle(message: Message) -> bytes:
            runs.append(message.data.decode())
            return name.encode()

        return handle

    await first.serve(topic, server("a"), service("group-a"))
    await second.serve(topic, server("b"), service("group-b"))
    payloads = [f"call-{i}" for i in range(40)]
    await asyncio.gather(
        *(client.request(topic, Message(data=p.encode()), timeout=15) for p in payloads)
    )
    assert sorted(runs) == sorted(payloads)  # each call ran exactly once


async def test_a_call_served_in_process_skips_the_broker(
    make_broker: MakeBroker, topic: str
) -> None:
    broker = await make_broker()
    seen: list[Message] = []

    async def echo(message: Message) -> bytes:
        seen.append(message)
        return message.data

    await broker.serve(topic, echo, service())
    reply = await broker.request(topic, Message(data=b"local"), timeout=5)
    assert reply.data == b"local"
    assert seen[0].reply_to is None  # handed over directly, never published


async def test_a_stopped_server_is_gone_at_once_for_its_own_process(
    make_broker: MakeBroker, topic: str
) -> None:
    server, client = await make_broker(), await make_broker()
    subscription = await server.serve(topic, upper, service())
    assert (await client.request(topic, Message(data=b"a"), timeout=10)).data == b"A"
    assert (await server.request(topic, Message(data=b"b"), timeout=10)).data == b"B"
    await subscription.stop()
    with pytest.raises(NoResponders):
        await server.request(topic, Message(data=b"x"), timeout=10)


async def test_services_and_apps_are_separate_namespaces(
    make_broker: MakeBroker, topic: str
) -> None:
    app, client = await make_broker(), await make_broker()
    await app.announce(Presence(name=topic, instance=app.instance))  # an app, not a service
    with pytest.raises(NoResponders):
        await client.request(topic, Message(data=b"x"), timeout=10)
    await app.serve(topic, upper, service())
    [entry] = await client.instances(topic, kind=SERVICE)
    assert entry.kind == SERVICE


async def test_envelopes_of_several_mebibytes_travel_both_ways(
    make_broker: MakeBroker, topic: str
) -> None:
    server, client = await make_broker(), await make_broker()
    body = bytes(range(256)) * (16 * 1024)  # 4 MiB, every byte value

    async def reverse(message: Message) -> bytes:
        request = Envelope.decode(message.data)
        headers = Headers([("Set-Cookie", "a=1"), ("set-cookie", "b=2")])
        return Envelope(status=201, headers=headers, body=request.body[::-1]).encode()

    await server.serve(topic, reverse, service())
    request = Envelope(headers=Headers({"X-Id": "1"}), body=body, attributes={"method": "POST"})
    reply = Envelope.decode((await client.request(topic, Message(request.encode()), 30)).data)
    assert reply.status == 201
    assert reply.headers.get_all("SET-COOKIE") == ["a=1", "b=2"]
    assert reply.body == body[::-1]


async def test_a_redelivered_call_is_refused_not_run_twice(
    make_broker: MakeBroker, topic: str
) -> None:
    # Given a call whose first server took it and then vanished without answering
    server, client = await make_broker(), await make_broker()
    runs = 0
    stuck = asyncio.Event()

    async def hang_first(message: Message) -> bytes:
        nonlocal runs
        runs += 1
        stuck.set()
        await asyncio.sleep(30)
        return b"never"

    options = SubscriptionOptions(group="svc", processing_timeout=1.0)
    await server.serve(topic, hang_first, options)
    call = asyncio.create_task(client.request(topic, Message(data=b"x"), timeout=20))
    await asyncio.wait_for(stuck.wait(), 10)
    # When its handler's lease runs out and the call is delivered again
    # Then the caller hears REDELIVERED and the work did not run a second time
    with pytest.raises(RemoteError) as caught:
        await call
    assert caught.value.code == REDELIVERED
    assert runs == 1


# -- durable mode ------------------------------------------------------------------------------


class Record:
    """A Replies record in memory, as the invocation layer keeps one durably."""

    def __init__(self) -> None:
        self.replies: dict[str, Message] = {}

    async def recorded(self, key: str) -> Message | None:
        return self.replies.get(key)

    async def record(self, key: str, reply: Message) -> None:
        self.replies[key] = reply


def durable(group: str = "svc", attempts: int = 3) -> SubscriptionOptions:
    retry = RetryPolicy(max_attempts=attempts, initial_interval=0.05, max_interval=0.1, jitter=0)
    return SubscriptionOptions(group=group, processing_timeout=5.0, retry=retry)


async def test_a_durable_request_waits_for_its_server_and_replies_to_a_topic(
    make_broker: MakeBroker, topic: str
) -> None:
    client, server = await make_broker(), await make_broker()
    replies = Collector()
    await client.subscribe(f"{topic}.replies", replies, service("caller"))
    request_id = await client.submit(
        topic, Message(data=b"later"), reply_to=f"{topic}.replies"
    )  # nobody serves the topic yet
    await server.serve(topic, upper, durable(), mode=RequestMode.DURABLE)
    [reply] = await replies.wait_for(1)
    assert (reply.id, reply.data) == (request_id, b"LATER")


async def test_a_durable_failure_is_retried_then_answered(
    make_broker: MakeBroker, topic: str
) -> None:
    client, server = await make_broker(), await make_broker()
    attempts: list[int] = []

    async def flaky(message: Message) -> bytes:
        attempts.append(message.attempt)
        if message.attempt < 3:
            raise RuntimeError("not yet")
        return b"done"

    replies = Collector()
    await client.subscribe(f"{topic}.replies", replies, service("caller"))
    await server.serve(topic, flaky, durable(attempts=5), mode=RequestMode.DURABLE)
    await client.submit(topic, Message(data=b"x"), reply_to=f"{topic}.replies")
    [reply] = await replies.wait_for(1)
    assert reply.data == b"done" and ERROR_KEY not in reply.metadata
    assert attempts == [1, 2, 3]


async def test_a_durable_request_out_of_attempts_is_answered_and_dead_lettered(
    make_broker: MakeBroker, topic: str
) -> None:
    client, server = await make_broker(), await make_broker()

    async def failing(message: Message) -> bytes:
        raise Refused("never")

    replies, dead = Collector(), Collector()
    await client.subscribe(f"{topic}.replies", replies, service("caller"))
    await client.subscribe(f"{topic}.deadletter", dead, service("dlq"))
    await server.serve(topic, failing, durable(attempts=2), mode=RequestMode.DURABLE)
    request_id = await client.submit(topic, Message(data=b"x"), reply_to=f"{topic}.replies")
    [reply] = await replies.wait_for(1)
    assert reply.metadata[ERROR_KEY] == "REFUSED"
    [letter] = await dead.wait_for(1)
    assert letter.id == request_id


async def test_a_durable_request_already_answered_is_not_run_again(
    make_broker: MakeBroker, topic: str
) -> None:
    client, server = await make_broker(), await make_broker()
    runs = 0

    async def count(message: Message) -> bytes:
        nonlocal runs
        runs += 1
        return b"ran"

    record = Record()
    replies = Collector()
    await client.subscribe(f"{topic}.replies", replies, service("caller"))
    await server.serve(topic, count, durable(), mode=RequestMode.DURABLE, replies=record)
    for _ in range(2):  # the same idempotency key submitted twice
        await client.submit(
            topic, Message(data=b"x"), reply_to=f"{topic}.replies", idempotency_key="order-7"
        )
    received = await replies.wait_for(2)
    assert [r.data for r in received] == [b"ran", b"ran"]
    assert runs == 1
