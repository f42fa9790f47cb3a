"""The delivery invariants of DESIGN §2.2, checked by name on every backend.

Every test runs once per backend through the ``env`` / ``make_broker`` fixtures; brokers made in
one test share a server, so two brokers stand for two processes.
"""

from __future__ import annotations

import asyncio
import time

from bus.broker import BaseBroker, Subscription
from bus.message import Message, Outcome
from bus.options import RetryPolicy, SubscriptionOptions
from tests.backends import BackendEnv
from tests.conftest import MakeBroker
from tests.helpers import Collector, eventually

FAST_RETRY = RetryPolicy(max_attempts=3, initial_interval=0.2, max_interval=0.5, jitter=0.0)


def opts(group: str = "g1", **kwargs: object) -> SubscriptionOptions:
    kwargs.setdefault("retry", FAST_RETRY)
    kwargs.setdefault("processing_timeout", 5.0)
    return SubscriptionOptions(group=group, **kwargs)  # type: ignore[arg-type]


def batch(n: int, prefix: str = "m") -> list[Message]:
    return [Message(data=f"{prefix}{i}".encode(), metadata={"i": str(i)}) for i in range(n)]


# A handler deadline short enough that waiting out its lease is cheap (see nothing_comes_back).
SHORT = 0.5


async def nothing_comes_back(
    broker: BaseBroker, topic: str, subscription: Subscription, options: SubscriptionOptions
) -> None:
    """Fail if the group of ``subscription`` would get anything of ``topic`` again.

    Stops the subscription (its acks are flushed; RabbitMQ requeues whatever is unacked), waits
    out the lease (a lost ack becomes due again) and subscribes the group afresh: every backend
    hands out what is due before new messages, so once a sentinel published now arrives,
    anything that was coming back has arrived first.
    """
    await subscription.stop()
    await asyncio.sleep(options.lease)  # the lease is the behaviour under test, not a guess
    fresh = Collector()
    await broker.subscribe(topic, fresh, options)
    sentinel = Message(data=b"sentinel")
    await broker.publish(topic, [sentinel])
    await fresh.wait_for(1, timeout=20)
    assert fresh.ids == [sentinel.id], "a settled message came back"


# -- invariant 1: a publish returns only after the broker holds the message durably ---------


async def test_invariant_1_publish_is_durable_when_it_returns(
    make_broker: MakeBroker, topic: str
) -> None:
    # Given a publisher that goes away right after publishing (before anyone subscribed)
    publisher = await make_broker()
    sent = batch(50)
    await publisher.publish(topic, sent)
    await publisher.close()
    # When another process subscribes
    consumer = await make_broker()
    collector = Collector()
    await consumer.subscribe(topic, collector, opts())
    # Then every message published is there
    await collector.wait_for(50)
    assert sorted(collector.ids) == sorted(m.id for m in sent)


async def test_publish_keeps_data_metadata_and_id(make_broker: MakeBroker, topic: str) -> None:
    broker = await make_broker()
    collector = Collector()
    await broker.subscribe(topic, collector, opts())
    payloads = [bytes(range(256)), b"", b"\x00\xff" * 1000]
    sent = [Message(data=p, metadata={"k": f"v{i}", "ünï": "çødé"}) for i, p in enumerate(payloads)]
    await broker.publish(topic, sent)
    received = {m.id: m for m in await collector.wait_for(3)}
    for message in sent:
        got = received[message.id]
        assert got.data == message.data
        assert dict(got.metadata) == dict(message.metadata)
        assert got.topic == topic
        assert got.attempt == 1


# -- invariant 2: acked only after SUCCESS or DROP; otherwise redelivered -------------------


async def test_invariant_2_unacked_delivery_is_redelivered_to_the_group(
    make_broker: MakeBroker, topic: str
) -> None:
    # Given instance A whose handler never finishes, and which shuts down without draining
    a = await make_broker(drain_timeout=0.0)
    started = asyncio.Event()

    async def stuck(message: Message) -> Outcome:
        started.set()
        await asyncio.Event().wait()
        return Outcome.SUCCESS

    await a.subscribe(topic, stuck, opts())
    sent = batch(1)
    await a.publish(topic, sent)
    await asyncio.wait_for(started.wait(), 10)
    await a.close()
    # When instance B of the same group subscribes
    b = await make_broker()
    collector = Collector()
    await b.subscribe(topic, collector, opts())
    # Then B gets the message again: same id, next attempt
    [message] = await collector.wait_for(1, timeout=15)
    assert message.id == sent[0].id
    assert message.attempt == 2


async def test_invariant_2_success_is_acked_once(make_broker: MakeBroker, topic: str) -> None:
    broker = await make_broker()
    collector = Collector()
    options = opts(processing_timeout=SHORT)
    subscription = await broker.subscribe(topic, collector, options)
    await broker.publish(topic, batch(20))
    await collector.wait_for(20)
    await nothing_comes_back(broker, topic, subscription, options)
    assert len(collector.seen) == 20, "a message acked as SUCCESS came back"


# -- invariant 3: RETRY is redelivered after a durable backoff ------------------------------


async def test_invariant_3_retry_redelivers_after_backoff(
    make_broker: MakeBroker, topic: str
) -> None:
    broker = await make_broker()
    policy = RetryPolicy(max_attempts=5, initial_interval=0.4, max_interval=1.0, jitter=0.0)
    collector = Collector(lambda m: Outcome.RETRY if m.attempt < 3 else Outcome.SUCCESS)
    await broker.subscribe(topic, collector, opts(retry=policy))
    sent = batch(1)
    started = time.monotonic()
    await broker.publish(topic, sent)
    seen = await collector.wait_for(3, timeout=20)
    assert [m.attempt for m in seen] == [1, 2, 3]
    assert {m.id for m in seen} == {sent[0].id}
    assert time.monotonic() - started >= 0.4 + 0.8 - 0.1, "retries came back before the backoff"


async def test_invariant_3_retry_survives_the_consumer_going_away(
    make_broker: MakeBroker, topic: str
) -> None:
    # Given a consumer that asks for a retry with a backoff, then goes away during the wait
    a = await make_broker()
    policy = RetryPolicy(max_attempts=5, initial_interval=1.0, max_interval=1.0, jitter=0.0)
    first = Collector(lambda m: Outcome.RETRY)
    sub = await a.subscribe(topic, first, opts(retry=policy))
    sent = batch(1)
    await a.publish(topic, sent)
    await first.wait_for(1)
    await sub.stop()
    await a.close()
    # When another instance of the group consumes
    b = await make_broker()
    second = Collector()
    await b.subscribe(topic, second, opts(retry=policy))
    # Then the message comes back once the backoff is over, as attempt 2
    [message] = await second.wait_for(1, timeout=20)
    assert (message.id, message.attempt) == (sent[0].id, 2)


async def test_exception_and_timeout_count_as_retry(make_broker: MakeBroker, topic: str) -> None:
    broker = await make_broker()
    attempts: list[int] = []

    async def flaky(message: Message) -> Outcome:
        attempts.append(message.attempt)
        if message.attempt == 1:
            raise RuntimeError("boom")
        if message.attempt == 2:
            await asyncio.sleep(5)
        return Outcome.SUCCESS

    await broker.subscribe(topic, flaky, opts(processing_timeout=0.5))
    await broker.publish(topic, batch(1))
    await eventually(lambda: attempts == [1, 2, 3], timeout=20)


# -- invariant 4: dead letters after maxAttempts, and on DROP -------------------------------


async def test_invariant_4_dead_letter_after_max_attempts(
    make_broker: MakeBroker, topic: str
) -> None:
    broker = await make_broker()
    poison = Collector(lambda m: Outcome.RETRY)
    options = opts(retry=FAST_RETRY, processing_timeout=SHORT)
    retrying = await broker.subscribe(topic, poison, options)
    dead = Collector()
    reader = opts(group="dlq-reader", processing_timeout=SHORT)
    reading = await broker.subscribe(f"{topic}.deadletter", dead, reader)
    sent = batch(1)
    await broker.publish(topic, sent)
    [letter] = await dead.wait_for(1, timeout=20)
    assert letter.id == sent[0].id and letter.data == sent[0].data
    assert [m.attempt for m in poison.seen] == [1, 2, 3]
    await nothing_comes_back(broker, topic, retrying, options)
    await nothing_comes_back(broker, f"{topic}.deadletter", reading, reader)
    assert len(poison.seen) == 3 and len(dead.seen) == 1, "a dead letter was delivered again"


async def test_invariant_4_drop_goes_to_the_configured_dead_letter_topic(
    make_broker: MakeBroker, topic: str
) -> None:
    broker = await make_broker()
    dropper = Collector(lambda m: Outcome.DROP)
    options = opts(dead_letter_topic=f"{topic}.poison", processing_timeout=SHORT)
    dropping = await broker.subscribe(topic, dropper, options)
    dead = Collector()
    await broker.subscribe(f"{topic}.poison", dead, opts(group="dlq-reader"))
    sent = batch(3)
    await broker.publish(topic, sent)
    await dead.wait_for(3)
    assert sorted(dead.ids) == sorted(m.id for m in sent)
    await nothing_comes_back(broker, topic, dropping, options)
    assert len(dropper.seen) == 3 and len(dead.seen) == 3


async def test_dead_letter_published_before_anyone_reads_it_is_kept(
    make_broker: MakeBroker, topic: str
) -> None:
    broker = await make_broker()
    await broker.subscribe(topic, Collector(lambda m: Outcome.DROP), opts())
    await broker.publish(topic, batch(2))
    await asyncio.sleep(1.0)
    dead = Collector()
    await broker.subscribe(f"{topic}.deadletter", dead, opts(group="late-reader"))
    await dead.wait_for(2)


# -- invariant 5: per-group order of first deliveries ---------------------------------------


async def test_invariant_5_first_deliveries_follow_publish_order(
    make_broker: MakeBroker, topic: str
) -> None:
    broker = await make_broker()
    collector = Collector()
    sent = batch(300)
    for i in range(0, 300, 50):
        await broker.publish(topic, sent[i : i + 50])
    await broker.subscribe(topic, collector, opts(concurrency=1))
    await collector.wait_for(300)
    assert collector.ids == [m.id for m in sent]


# -- invariant 6: redeliveries carry the same id and an incremented attempt -----------------


async def test_invariant_6_redelivery_keeps_id_and_counts_attempts(
    make_broker: MakeBroker, topic: str
) -> None:
    broker = await make_broker()
    collector = Collector(lambda m: Outcome.RETRY if m.attempt < 2 else Outcome.SUCCESS)
    await broker.subscribe(topic, collector, opts())
    sent = batch(5)
    await broker.publish(topic, sent)
    await collector.wait_for(10, timeout=20)
    by_id: dict[str, list[int]] = {}
    for message in collector.seen:
        by_id.setdefault(message.id, []).append(message.attempt)
    assert by_id == {m.id: [1, 2] for m in sent}


# -- invariant 7: storage bounded, never losing what a group still needs --------------------


async def test_invariant_7_trimming_keeps_what_a_slow_group_needs(
    env: BackendEnv, make_broker: MakeBroker, topic: str
) -> None:
    # Given a fast group and a slow group that has not consumed yet
    broker = await make_broker()
    fast = Collector()
    await broker.subscribe(topic, fast, opts(group="fast"))
    slow_sub = await broker.subscribe(topic, Collector(delay=60), opts(group="slow", concurrency=1))
    await slow_sub.stop()
    sent = batch(200)
    await broker.publish(topic, sent)
    await fast.wait_for(200)
    # When the slow group comes back, it still gets every message the fast group already acked
    slow = Collector()
    await broker.subscribe(topic, slow, opts(group="slow"))
    await slow.wait_for(200, timeout=20)
    assert sorted(slow.ids) == sorted(m.id for m in sent)
    if env.retained is not None:
        retained = env.retained
        # And once both groups acked everything, the storage of the topic is empty
        await eventually(lambda: _equal(retained(topic), 0), timeout=30, interval=0.5)


async def _equal(count: object, expected: int) -> bool:
    value = await count  # type: ignore[misc]
    return bool(value == expected)


# -- groups ---------------------------------------------------------------------------------


async def test_every_group_gets_every_message(make_broker: MakeBroker, topic: str) -> None:
    broker = await make_broker()
    one, two = Collector(), Collector()
    await broker.subscribe(topic, one, opts(group="one"))
    await broker.subscribe(topic, two, opts(group="two"))
    sent = batch(40)
    await broker.publish(topic, sent)
    await one.wait_for(40)
    await two.wait_for(40)
    assert sorted(one.ids) == sorted(two.ids) == sorted(m.id for m in sent)


async def test_instances_of_a_group_compete(make_broker: MakeBroker, topic: str) -> None:
    a, b = await make_broker(), await make_broker()
    first, second = Collector(delay=0.005), Collector(delay=0.005)
    await a.subscribe(topic, first, opts(concurrency=4, batch_size=10))
    await b.subscribe(topic, second, opts(concurrency=4, batch_size=10))
    sent = batch(400)
    await a.publish(topic, sent)
    await eventually(lambda: len(first.seen) + len(second.seen) >= 400, timeout=30)
    await asyncio.sleep(0.3)
    delivered = first.ids + second.ids
    assert sorted(delivered) == sorted(m.id for m in sent), "lost or duplicated"
    assert first.seen and second.seen, "one instance got nothing"


async def test_concurrency_is_bounded(make_broker: MakeBroker, topic: str) -> None:
    broker = await make_broker()
    collector = Collector(delay=0.02)
    await broker.subscribe(topic, collector, opts(concurrency=3))
    await broker.publish(topic, batch(30))
    await collector.wait_for(30)
    assert collector.max_running <= 3


async def test_stopped_subscription_leaves_messages_for_later(
    make_broker: MakeBroker, topic: str
) -> None:
    broker = await make_broker()
    first = Collector()
    sub = await broker.subscribe(topic, first, opts())
    await broker.publish(topic, batch(5))
    await first.wait_for(5)
    await sub.stop()
    assert not sub.running
    sent = batch(5, prefix="later")
    await broker.publish(topic, sent)
    later = Collector()
    await broker.subscribe(topic, later, opts())
    await later.wait_for(5)
    assert sorted(later.ids) == sorted(m.id for m in sent)
