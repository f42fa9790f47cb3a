"""RabbitMQ chaos and topology tests: every published id is counted.

(a) a consumer process SIGKILLed mid-stream loses nothing; (b) connections cut by a TCP proxy
recover and no confirmed publish is lost; (c) retries and dead letters of one group never reach
another group of the same topic.  Each test deletes what it declared on the shared broker.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aio_pika
import pytest

from bus.errors import BrokerUnavailable, InvalidArgument, PublishError, RequestTimeout
from bus.message import Message, Outcome
from bus.options import RetryPolicy, SubscriptionOptions
from bus.presence import Presence
from bus.rabbitmq import RabbitBroker, RabbitSettings, held_name, queue_name, retry_queue_name
from tests.backends import missing_service
from tests.backends.rabbitmq import (
    RABBITMQ_URL,
    delete_topology,
    queue_exists,
    rabbitmq_reachable,
)
from tests.helpers import Collector, eventually
from tests.rabbitmq_proxy import CuttableProxy

pytestmark = [pytest.mark.rabbitmq]

MakeRabbit = Callable[..., Awaitable[RabbitBroker]]
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def rabbit() -> AsyncIterator[MakeRabbit]:
    """Connected RabbitMQ brokers; closed, and everything they declared deleted, afterwards."""
    if not rabbitmq_reachable():
        missing_service("RabbitMQ is not reachable at 127.0.0.1:5672")
    made: list[RabbitBroker] = []

    async def make(settings: RabbitSettings | None = None, **kwargs: object) -> RabbitBroker:
        broker = RabbitBroker(settings or RabbitSettings(url=RABBITMQ_URL), **kwargs)  # type: ignore[arg-type]
        made.append(broker)
        await broker.connect()
        return broker

    yield make
    for broker in reversed(made):
        await broker.close()
    queues = {q for b in made for q in b.declared_queues}
    exchanges = {e for b in made for e in b.declared_exchanges}
    assert not await delete_topology(RABBITMQ_URL, queues, exchanges)


def messages(n: int, prefix: str = "m") -> list[Message]:
    return [Message(data=f"{prefix}{i}".encode() * 8) for i in range(n)]


async def publish_all(broker: RabbitBroker, topic: str, sent: list[Message], size: int) -> None:
    for i in range(0, len(sent), size):
        await broker.publish(topic, sent[i : i + size])


async def start_consumer(topic: str, group: str, out: Path) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.rabbitmq_consumer",
        RABBITMQ_URL,
        topic,
        group,
        str(out),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 20)
    assert line.strip() == b"ready", line
    return process


def recorded(out: Path) -> list[str]:
    if not out.exists():
        return []
    return [line.split()[0] for line in out.read_text().splitlines() if line.strip()]


@pytest.mark.slow
async def test_sigkilled_consumer_process_loses_nothing(
    rabbit: MakeRabbit, topic: str, tmp_path: Path
) -> None:
    # Given a consumer process of group "chaos" and 10,000 messages published to its topic
    group, out = "chaos", tmp_path / "seen-by-killed.txt"
    child = await start_consumer(topic, group, out)
    publisher = await rabbit()
    sent = messages(10_000)
    publishing = asyncio.create_task(publish_all(publisher, topic, sent, 500))
    try:
        # When the process is SIGKILLed mid-stream
        await eventually(lambda: len(recorded(out)) >= 2_000, timeout=30, interval=0.02)
        child.send_signal(signal.SIGKILL)
        await child.wait()
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    await publishing
    before_kill = set(recorded(out))
    assert 2_000 <= len(before_kill) < len(sent), "the kill did not land mid-stream"
    # Then another instance of the group gets every message the killed one had not acked
    survivor = await rabbit()
    collector = Collector()
    await survivor.subscribe(topic, collector, SubscriptionOptions(group=group, concurrency=50))
    wanted = {m.id for m in sent}
    await eventually(lambda: before_kill | set(collector.ids) >= wanted, timeout=30)
    assert before_kill | set(collector.ids) == wanted
    redelivered = [m for m in collector.seen if m.id in before_kill]
    assert all(m.attempt >= 2 for m in redelivered), "a redelivery did not count as an attempt"


@pytest.mark.slow
async def test_connection_cut_loses_no_confirmed_publish(rabbit: MakeRabbit, topic: str) -> None:
    async with CuttableProxy("127.0.0.1", 5672) as proxy:
        # Given a publisher and a consumer whose connections go through a proxy
        settings = RabbitSettings(
            url=f"amqp://guest:guest@127.0.0.1:{proxy.port}/", reconnect_wait=0.2
        )
        publisher, consumer = await rabbit(settings), await rabbit(settings)
        collector = Collector()
        await consumer.subscribe(topic, collector, SubscriptionOptions(group="cut", concurrency=20))
        confirmed: set[str] = set()
        failures = 0

        async def publish(batch: list[Message]) -> None:
            nonlocal failures
            while True:  # an unconfirmed batch is published again: at least once
                try:
                    await publisher.publish(topic, batch)
                except (PublishError, BrokerUnavailable):
                    failures += 1
                    await asyncio.sleep(0.05)
                    continue
                confirmed.update(m.id for m in batch)
                return

        async def stream() -> None:
            sent = messages(4_000)
            for i in range(0, len(sent), 50):
                await publish(sent[i : i + 50])

        # When every connection is cut twice while messages flow
        streaming = asyncio.create_task(stream())
        for mark in (1_000, 2_500):
            await eventually(lambda m=mark: len(confirmed) >= m, timeout=30, interval=0.01)  # type: ignore[misc]
            proxy.cut()
        await asyncio.wait_for(streaming, 60)
        # Then both sides reconnected and every confirmed message was delivered
        assert len(confirmed) == 4_000
        assert proxy.accepted >= 4, "the brokers did not reconnect"
        await eventually(lambda: set(collector.ids) >= confirmed, timeout=30)
        # and publishing still works after the cuts
        late = messages(10, prefix="late")
        await publisher.publish(topic, late)
        await eventually(lambda: set(collector.ids) >= {m.id for m in late}, timeout=15)
        await consumer.close()  # while the proxy still forwards
        await publisher.close()


async def test_retries_and_dead_letters_stay_in_their_group(rabbit: MakeRabbit, topic: str) -> None:
    # Given two groups on a topic; "flaky" retries every message once and poison ones forever
    broker = await rabbit()
    policy = RetryPolicy(max_attempts=3, initial_interval=0.1, max_interval=0.3, jitter=0.0)

    def flaky_outcome(message: Message) -> Outcome:
        if message.metadata.get("poison") or message.attempt < 2:
            return Outcome.RETRY
        return Outcome.SUCCESS

    flaky, steady, dead = Collector(flaky_outcome), Collector(), Collector()
    await broker.subscribe(topic, flaky, SubscriptionOptions(group="flaky", retry=policy))
    await broker.subscribe(topic, steady, SubscriptionOptions(group="steady", retry=policy))
    await broker.subscribe(f"{topic}.deadletter", dead, SubscriptionOptions(group="dlq"))
    good = messages(15)
    poison = [Message(data=b"bad", metadata={"poison": "1"}) for _ in range(5)]
    # When messages are published
    await broker.publish(topic, good + poison)
    # Then flaky sees each good one twice and each poison one three times, then dead-letters it
    await dead.wait_for(5, timeout=20)
    await eventually(lambda: len(flaky.seen) >= 15 * 2 + 5 * 3, timeout=20)
    await asyncio.sleep(1.0)  # anything duplicated would arrive by now
    attempts: dict[str, list[int]] = {}
    for message in flaky.seen:
        attempts.setdefault(message.id, []).append(message.attempt)
    assert attempts == {m.id: [1, 2] for m in good} | {m.id: [1, 2, 3] for m in poison}
    assert sorted(dead.ids) == sorted(m.id for m in poison)
    assert all(m.attempt == 1 and m.data == b"bad" for m in dead.seen)
    # and the other group got every message exactly once: no retry went through the fanout
    assert sorted(steady.ids) == sorted(m.id for m in good + poison)
    # the retries waited in flaky's own delay queue (100 ms rung), not in the topic
    assert retry_queue_name(queue_name("flaky", topic), 100) in broker.declared_queues


async def test_exchange_declared_by_another_client_is_used_as_is(
    rabbit: MakeRabbit, topic: str
) -> None:
    # Given a topic exchange declared the way a Dapr sidecar declares it (no alternate exchange)
    connection = await aio_pika.connect(RABBITMQ_URL)
    try:
        channel = await connection.channel()
        await channel.declare_exchange(topic, "fanout", durable=True)
    finally:
        await connection.close()
    broker = await rabbit()
    broker.declared_exchanges.add(topic)
    collector = Collector()
    # When omnibus subscribes and publishes to it
    await broker.subscribe(topic, collector, SubscriptionOptions(group="g"))
    sent = messages(5)
    await broker.publish(topic, sent)
    # Then it works, with the exchange as it was
    await collector.wait_for(5)
    assert sorted(collector.ids) == sorted(m.id for m in sent)


async def test_messages_before_the_first_subscriber_are_held_then_replayed(
    rabbit: MakeRabbit, topic: str
) -> None:
    broker = await rabbit()
    sent = messages(20)
    await broker.publish(topic, sent)
    assert await queue_exists(RABBITMQ_URL, held_name(topic))
    one, two = Collector(), Collector()
    await broker.subscribe(topic, one, SubscriptionOptions(group="one"))
    await one.wait_for(20)
    assert one.ids == [m.id for m in sent], "held messages came back out of order"
    # a group subscribing after the held messages were replayed starts from new messages
    await broker.subscribe(topic, two, SubscriptionOptions(group="two"))
    later = messages(3, prefix="later")
    await broker.publish(topic, later)
    await two.wait_for(3)
    await asyncio.sleep(0.3)
    assert two.ids == [m.id for m in later]


async def test_overflow_goes_to_the_dapr_style_dead_letter_queue(
    rabbit: MakeRabbit, topic: str
) -> None:
    # Given a group queue capped at 5 messages, with Dapr's enableDeadLetter
    settings = RabbitSettings(url=RABBITMQ_URL, max_len=5, enable_dead_letter=True)
    broker = await rabbit(settings)
    subscription = await broker.subscribe(topic, Collector(), SubscriptionOptions(group="capped"))
    await subscription.stop()
    # When 8 messages arrive while nobody consumes
    await broker.publish(topic, messages(8))
    # Then the 3 oldest went to dlq-<queue> instead of being dropped
    connection = await aio_pika.connect(RABBITMQ_URL)
    try:
        channel = await connection.channel()
        started = time.monotonic()
        while True:
            dlq = await channel.declare_queue(f"dlq-{queue_name('capped', topic)}", passive=True)
            count = dlq.declaration_result.message_count
            if count == 3 or time.monotonic() - started > 5:
                break
            await asyncio.sleep(0.05)
        assert count == 3
    finally:
        await connection.close()


async def test_a_broker_started_later_sees_existing_presence_at_once(
    rabbit: MakeRabbit, topic: str
) -> None:
    # Given an instance announced before the other broker existed
    first = await rabbit()
    await first.announce(Presence(name=topic, instance=first.instance, address="10.0.0.1:3500"))
    # When a broker starts afterwards (a fresh CLI process, say) and asks at once
    late = await rabbit()
    started = time.monotonic()
    [seen] = await late.instances(topic)
    # Then it sees the entry after its roll call, well before a heartbeat would have told it
    assert (seen.instance, seen.address) == (first.instance, "10.0.0.1:3500")
    assert time.monotonic() - started < 1.0


async def test_request_reply_and_presence_survive_a_connection_cut(
    rabbit: MakeRabbit, topic: str
) -> None:
    async with CuttableProxy("127.0.0.1", 5672) as proxy:
        url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/"
        settings = RabbitSettings(url=url, reconnect_wait=0.2)
        server, client = await rabbit(settings), await rabbit(settings)

        async def upper(message: Message) -> bytes:
            return message.data.upper()

        await server.serve(topic, upper, SubscriptionOptions(group="svc"))
        assert (await client.request(topic, Message(data=b"before"), timeout=10)).data == b"BEFORE"
        proxy.cut()

        async def answered() -> bool:
            try:
                reply = await client.request(topic, Message(data=b"after"), timeout=1)
            except (RequestTimeout, PublishError, BrokerUnavailable):
                return False
            return reply.data == b"AFTER"

        await eventually(answered, timeout=20, interval=0.2)
        assert [p.instance for p in await client.instances(topic)] == [server.instance]
        await client.close()  # while the proxy still forwards
        await server.close()


async def test_a_publish_while_disconnected_fails_fast_then_works_again(
    rabbit: MakeRabbit, topic: str
) -> None:
    async with CuttableProxy("127.0.0.1", 5672) as proxy:
        # Given a publisher whose connection goes through a proxy, and a subscriber that does not
        url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/"
        settings = RabbitSettings(url=url, reconnect_wait=0.2, connect_timeout=2.0)
        publisher, consumer = await rabbit(settings), await rabbit()
        collector = Collector()
        await consumer.subscribe(topic, collector, SubscriptionOptions(group="fast"))
        confirmed = messages(1, prefix="before")
        await publisher.publish(topic, confirmed)
        # When the network goes down (connections cut, new ones refused)
        proxy.down()
        # Then a publish fails with BrokerUnavailable after waiting the connect time-out for a
        # reconnect, not the confirm's 30 s (one sent before the loss was noticed may instead
        # lose its confirm: PublishError, at once)
        async with asyncio.timeout(10):
            while True:
                started = time.monotonic()
                try:
                    await publisher.publish(topic, messages(1, prefix="lost"))
                except PublishError:
                    continue
                except BrokerUnavailable:
                    waited = time.monotonic() - started
                    break
                raise AssertionError("a publish was confirmed while the network was down")
        assert settings.connect_timeout - 0.1 <= waited < settings.connect_timeout + 1.0
        # and a publish made while down succeeds when the network is back within that wait
        asyncio.get_running_loop().call_later(0.3, proxy.up)
        started = time.monotonic()
        after = messages(1, prefix="after")
        await publisher.publish(topic, after)
        assert time.monotonic() - started < settings.connect_timeout
        # and so do the next ones; every confirmed message reaches the subscriber
        later = messages(5, prefix="later")
        await publisher.publish(topic, later)
        wanted = {m.id for m in confirmed + after + later}
        await eventually(lambda: set(collector.ids) >= wanted, timeout=15)
        await publisher.close()  # while the proxy still forwards


async def test_held_messages_with_a_reused_id_are_all_replayed(
    rabbit: MakeRabbit, topic: str
) -> None:
    # Given three messages held before anyone subscribed, published with one cloudevent id
    broker = await rabbit()
    sent = [Message(data=f"m{i}".encode(), id="same-id") for i in range(3)]
    await broker.publish(topic, sent)
    # When the first group subscribes
    collector = Collector()
    await broker.subscribe(topic, collector, SubscriptionOptions(group="g"))
    # Then it gets all three, not only the first of that id
    got = await collector.wait_for(3)
    assert sorted(m.data for m in got) == [b"m0", b"m1", b"m2"]


async def test_a_refused_rung_declaration_leaves_publishing_alone(
    rabbit: MakeRabbit, topic: str
) -> None:
    # Given a delay rung that exists with other arguments than ours (declared by someone else)
    broker = await rabbit()
    group = "g"
    rung = retry_queue_name(queue_name(group, topic), 100)
    connection = await aio_pika.connect(RABBITMQ_URL)
    try:
        channel = await connection.channel()
        await channel.declare_queue(rung, durable=True)
        broker.declared_queues.add(rung)
    finally:
        await connection.close()
    # When a handler asks for a retry, whose rung declaration RabbitMQ refuses
    retried = Collector(lambda m: Outcome.RETRY)
    policy = RetryPolicy(max_attempts=5, initial_interval=0.05, max_interval=0.05, jitter=0.0)
    options = SubscriptionOptions(group=group, retry=policy)
    await broker.subscribe(topic, retried, options)
    await broker.publish(topic, [Message(data=b"x")])
    await retried.wait_for(1)
    # Then publishing on the broker's shared channel keeps working
    other = f"{topic}.other"
    collector = Collector()
    await broker.subscribe(other, collector, SubscriptionOptions(group="h"))
    for i in range(20):
        await broker.publish(other, [Message(data=str(i).encode())])
    assert len(await collector.wait_for(20)) == 20


@pytest.mark.rabbitmq
async def test_a_batch_with_an_unsendable_message_fails_whole_and_leaves_nothing_behind(
    rabbit: MakeRabbit, topic: str
) -> None:
    # Given a batch whose second message has a TTL RabbitMQ cannot take
    broker = await rabbit()
    batch = [Message(data=b"ok"), Message(data=b"bad", metadata={"ttlInSeconds": "soon"})]
    # When it is published, Then it fails as a bad argument before anything is sent, and no
    # publish coroutine is left un-awaited (warnings are errors in this suite)
    with pytest.raises(InvalidArgument, match="ttlInSeconds"):
        await broker.publish(topic, batch)
    gc.collect()
    await asyncio.sleep(0)
    assert await broker.browse(topic, limit=10) == []
