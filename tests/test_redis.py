"""Redis-specific behaviour: chaos (killed consumer, restarted server), durable retries, dead
letters, Dapr wire-format interop and the component metadata.

Every test runs against a private redis-server on a free port; each chaos test counts every
published id.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis

from bus.errors import BrokerError, BrokerUnavailable, ConfigError, PublishError
from bus.message import Message, Outcome
from bus.options import RetryPolicy, SubscriptionOptions
from bus.redis import RedisBroker
from bus.redis.settings import RedisSettings
from tests.backends import missing_service
from tests.backends.redis import RedisServer, free_port, redis_available
from tests.helpers import Collector, eventually

pytestmark = pytest.mark.redis

ROOT = Path(__file__).resolve().parent.parent


def unique(prefix: str = "t") -> str:
    return f"{prefix}.{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def broker(redis_server: RedisServer) -> AsyncIterator[RedisBroker]:
    async with RedisBroker(redis_server.settings(redeliver_interval=0.5)) as made:
        yield made


@pytest.fixture
def durable_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server with ``appendonly yes, appendfsync always``."""
    if not redis_available():
        missing_service("redis-server is not installed")
    server = RedisServer(tmp_path, durable=True)
    server.start()
    yield server
    server.kill()


# -- chaos ----------------------------------------------------------------------------------


@pytest.mark.slow
async def test_chaos_consumer_process_killed_mid_stream_loses_nothing(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # Given a consumer process of group "chaos" and a stream of 20,000 messages being published
    topic, total = unique(), 20_000
    out = tmp_path / "a.ids"
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.redis_consumer", "--port", str(redis_server.port),
         "--topic", topic, "--group", "chaos", "--out", str(out), "--timeout", "2"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), 20)
        assert line.strip() == b"ready"
        sent: list[str] = []
        async with RedisBroker(redis_server.settings()) as publisher:

            async def publish() -> None:
                for _ in range(total // 200):
                    batch = [Message(data=b"x" * 100) for _ in range(200)]
                    await publisher.publish(topic, batch)
                    sent.extend(m.id for m in batch)
                    await asyncio.sleep(0.005)  # a stream, not one burst

            publishing = asyncio.create_task(publish())
            # When the consumer is SIGKILLed mid-stream
            await eventually(lambda: _count_lines(out) >= 3_000, timeout=30, interval=0.02)
            process.kill()
            process.wait(10)
            await publishing
        assert _count_lines(out) < total, "the consumer finished before it was killed"
        probe = aioredis.Redis(host="127.0.0.1", port=redis_server.port)
        orphaned = (await probe.xpending(topic, "chaos"))["pending"]  # the dead consumer's
        # And another instance of the group takes over
        survivor = Collector()
        settings = redis_server.settings(redeliver_interval=0.5)
        async with RedisBroker(settings) as other:
            await other.subscribe(
                topic, survivor, SubscriptionOptions(group="chaos", processing_timeout=2.0)
            )
            seen = set(survivor.ids)

            async def all_seen_and_acked() -> bool:
                # The dead consumer may have written ids it never acked: they are "seen" before
                # the survivor reclaims them, so wait for the group to hold nothing pending too.
                seen.update(survivor.ids)
                if len(seen | _ids(out)) < total:
                    return False
                return (await probe.xpending(topic, "chaos"))["pending"] == 0

            try:
                await eventually(all_seen_and_acked, timeout=30, interval=0.2)
            finally:
                await probe.aclose()
        # Then every published id was delivered at least once
        missing = set(sent) - _ids(out) - set(survivor.ids)
        assert len(sent) == total and not missing, f"{len(missing)} messages lost"
        if orphaned:  # what the dead consumer held came back through the reclaim, as retries
            assert any(m.attempt >= 2 for m in survivor.seen)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        if process.stdout is not None:
            process.stdout.close()


def _count_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _ids(path: Path) -> set[str]:
    return set(path.read_text().split()) if path.exists() else set()


@pytest.mark.slow
async def test_chaos_redis_restart_loses_no_acknowledged_publish(
    durable_server: RedisServer,
) -> None:
    # Given a durable Redis, a consumer and a publisher that retries refused batches
    topic = unique()
    settings = durable_server.settings(redeliver_interval=0.5)
    acknowledged: list[str] = []
    errors = 0
    consumer_seen = Collector()
    async with RedisBroker(settings) as consumer, RedisBroker(settings) as publisher:
        subscription = await consumer.subscribe(
            topic, consumer_seen, SubscriptionOptions(group="g", processing_timeout=2.0)
        )

        async def publish() -> None:
            nonlocal errors
            for _ in range(100):
                batch = [Message(data=b"y" * 100) for _ in range(50)]
                while True:
                    try:
                        await publisher.publish(topic, batch)
                        break
                    except BrokerError:
                        errors += 1
                        await asyncio.sleep(0.1)
                acknowledged.extend(m.id for m in batch)
                await asyncio.sleep(0.01)

        publishing = asyncio.create_task(publish())
        # When the server is killed mid-stream and restarted on the same files
        await eventually(lambda: len(acknowledged) >= 2_000, timeout=30, interval=0.01)
        durable_server.kill()
        await asyncio.sleep(0.5)
        await asyncio.to_thread(durable_server.start)
        await asyncio.wait_for(publishing, 30)
        # Then every acknowledged publish is delivered, and the consumer recovered by itself
        await eventually(
            lambda: set(acknowledged) <= set(consumer_seen.ids), timeout=30, interval=0.2
        )
        assert subscription.running
        assert errors > 0, "the publisher never saw the outage"


async def test_request_reply_and_serving_resume_after_a_redis_restart(
    durable_server: RedisServer,
) -> None:
    settings = durable_server.settings(redeliver_interval=0.5)
    async with RedisBroker(settings) as server, RedisBroker(settings) as client:

        async def upper(message: Message) -> bytes:
            return message.data.upper()

        topic = unique("svc")
        await server.serve(topic, upper, SubscriptionOptions(group="svc", processing_timeout=2))
        assert (await client.request(topic, Message(data=b"before"), timeout=5)).data == b"BEFORE"
        durable_server.kill()
        await asyncio.to_thread(durable_server.start)
        replies: list[bytes] = []

        async def answered() -> bool:
            try:
                replies.append((await client.request(topic, Message(data=b"after"), 2)).data)
            except Exception:
                return False
            return True

        await eventually(answered, timeout=20, interval=0.2)
        assert replies == [b"AFTER"]


# -- durable retries and dead letters -------------------------------------------------------


async def test_retry_twice_then_success_delivers_three_attempts_of_one_id(
    broker: RedisBroker, raw: aioredis.Redis
) -> None:
    topic = unique()
    policy = RetryPolicy(max_attempts=5, initial_interval=0.5, max_interval=0.5, jitter=0.0)
    collector = Collector(lambda m: Outcome.RETRY if m.attempt < 3 else Outcome.SUCCESS)
    await broker.subscribe(topic, collector, SubscriptionOptions(group="g", retry=policy))
    sent = Message(data=b"retry me")
    await broker.publish(topic, [sent])
    await collector.wait_for(1)
    # While the retry waits, it is recorded in Redis and the entry stays pending
    retry_key = f"omnibus:retry:{topic}:g"
    await eventually(lambda: raw.zcard(retry_key), timeout=5)
    assert (await raw.xpending(topic, "g"))["pending"] == 1
    seen = await collector.wait_for(3, timeout=15)
    assert [m.attempt for m in seen] == [1, 2, 3]
    assert {m.id for m in seen} == {sent.id}
    await eventually(lambda: _nothing_pending(raw, topic, "g"), timeout=5)
    assert await raw.zcard(retry_key) == 0


async def _nothing_pending(raw: aioredis.Redis, topic: str, group: str) -> bool:
    return bool((await raw.xpending(topic, group))["pending"] == 0)


async def test_poison_message_ends_in_the_dead_letter_topic_and_nowhere_else(
    broker: RedisBroker, raw: aioredis.Redis
) -> None:
    topic = unique()
    policy = RetryPolicy(max_attempts=3, initial_interval=0.1, max_interval=0.2, jitter=0.0)
    poison = Collector(lambda m: Outcome.RETRY)
    options = SubscriptionOptions(group="g", retry=policy)
    await broker.subscribe(topic, poison, options)
    sent = Message(data=b"poison", metadata={"k": "v"})
    await broker.publish(topic, [sent])
    await eventually(lambda: raw.xlen(f"{topic}.deadletter"), timeout=15)
    await asyncio.sleep(1.0)  # time for any stray redelivery to show
    assert [m.attempt for m in poison.seen] == [1, 2, 3]
    [(_, fields)] = await raw.xrange(f"{topic}.deadletter")
    assert fields[b"data"] == b"poison"
    assert orjson.loads(fields[b"metadata"])["omnibus-id"] == sent.id
    assert await _nothing_pending(raw, topic, "g")
    assert await raw.zcard(f"omnibus:retry:{topic}:g") == 0
    letters = Collector()
    await broker.subscribe(f"{topic}.deadletter", letters, SubscriptionOptions(group="dlq"))
    [letter] = await letters.wait_for(1)
    assert (letter.id, letter.data, dict(letter.metadata)) == (sent.id, b"poison", {"k": "v"})


# -- Dapr wire format -----------------------------------------------------------------------


async def test_entry_with_only_data_is_delivered_with_its_entry_id(
    broker: RedisBroker, raw: aioredis.Redis
) -> None:
    # Given an entry as a Dapr sidecar writes it: only the data field
    topic = unique()
    entry_id = (await raw.xadd(topic, {"data": b'{"specversion":"1.0"}'})).decode()
    collector = Collector()
    await broker.subscribe(topic, collector, SubscriptionOptions(group="dapr-app"))
    [message] = await collector.wait_for(1)
    assert (message.id, message.data, message.attempt) == (entry_id, b'{"specversion":"1.0"}', 1)
    assert dict(message.metadata) == {}


async def test_our_entries_carry_the_exact_bytes_in_data(
    broker: RedisBroker, raw: aioredis.Redis
) -> None:
    topic = unique()
    payload = bytes(range(256)) * 4
    sent = Message(data=payload, metadata={"rawPayload": "true"})
    await broker.publish(topic, [sent])
    [(_, fields)] = await raw.xrange(topic)
    assert set(fields) == {b"data", b"metadata"}
    assert fields[b"data"] == payload
    metadata = orjson.loads(fields[b"metadata"])
    assert metadata == {"rawPayload": "true", "omnibus-id": sent.id}
    assert all(isinstance(v, str) for v in metadata.values()), "Dapr reads map[string]string"


async def test_trimming_keeps_unacked_entries_and_drops_acked_ones(
    broker: RedisBroker, raw: aioredis.Redis
) -> None:
    topic = unique()
    done = Collector()
    await broker.subscribe(topic, done, SubscriptionOptions(group="fast"))
    await raw.xgroup_create(topic, "idle", id="$")  # a group that never reads
    await broker.publish(topic, [Message(data=b"a") for _ in range(150)])
    await done.wait_for(150)
    await broker.trim(topic)
    assert await raw.xlen(topic) == 150, "trimmed entries the idle group still needs"
    await raw.xgroup_destroy(topic, "idle")
    await broker.publish(topic, [Message(data=b"b")])
    await done.wait_for(151)
    await eventually(lambda: _xlen_below(raw, topic, 2), timeout=10, interval=0.2)


async def test_pending_entries_trimmed_away_are_acked_and_counted(
    redis_server: RedisServer, raw: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    # Given an entry delivered to a consumer that died, then trimmed away by a hard cap
    topic = unique()
    await raw.xgroup_create(topic, "g", id="0", mkstream=True)
    await raw.xadd(topic, {"data": b"lost"})
    await raw.xreadgroup("g", "dead-instance", {topic: ">"}, count=1)
    await raw.xtrim(topic, maxlen=0)
    assert (await raw.xpending(topic, "g"))["pending"] == 1
    # When a live instance reclaims entries idle past processingTimeout
    settings = redis_server.settings(redeliver_interval=0.2)
    collector = Collector()
    async with RedisBroker(settings) as live:
        await live.subscribe(
            topic, collector, SubscriptionOptions(group="g", processing_timeout=0.2)
        )
        # Then the vanished entry is acked (not redelivered forever) and the loss is logged
        await eventually(lambda: _nothing_pending(raw, topic, "g"), timeout=10)
    assert collector.seen == []
    assert any("trimmed away" in r.getMessage() for r in caplog.records)


async def test_max_len_approx_caps_the_stream_only_when_set(
    redis_server: RedisServer, raw: aioredis.Redis
) -> None:
    capped, uncapped = unique(), unique()
    async with RedisBroker(redis_server.settings(max_len_approx=100)) as broker:
        for _ in range(10):
            await broker.publish(capped, [Message(data=b"z") for _ in range(100)])
    async with RedisBroker(redis_server.settings()) as broker:
        await broker.publish(uncapped, [Message(data=b"z") for _ in range(1000)])
    assert await raw.xlen(capped) < 1000
    assert await raw.xlen(uncapped) == 1000


async def _xlen_below(raw: aioredis.Redis, topic: str, limit: int) -> bool:
    await asyncio.sleep(0)
    return bool(await raw.xlen(topic) < limit)


# -- metadata -------------------------------------------------------------------------------


async def test_unreachable_server_is_reported_not_hidden() -> None:
    with pytest.raises(BrokerUnavailable):
        await RedisBroker(RedisSettings(port=free_port(), dial_timeout=1.0)).connect()


async def test_publish_while_redis_is_down_raises_instead_of_losing(tmp_path: Path) -> None:
    if not redis_available():
        missing_service("redis-server is not installed")
    server = RedisServer(tmp_path)
    server.start()
    try:
        async with RedisBroker(server.settings()) as broker:
            await broker.publish(unique(), [Message(data=b"up")])
            server.kill()
            with pytest.raises(BrokerUnavailable):
                await broker.publish(unique(), [Message(data=b"down")])
    finally:
        server.kill()


async def test_a_failed_trim_does_not_lose_reclaimed_entries(
    redis_server: RedisServer, raw: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an entry delivered to a consumer that died before acking it
    topic, group = unique(), "g"
    async with RedisBroker(redis_server.settings(redeliver_interval=0.3)) as broker:
        await broker.publish(topic, [Message(data=b"orphan")])
        await raw.xgroup_create(topic, group, id="0")
        await raw.xreadgroup(group, "dead", {topic: ">"}, count=1)
        # When the live consumer's periodic trim fails while it reclaims the entry
        failures: list[int] = []

        async def failing_trim(name: str) -> None:
            failures.append(1)
            raise BrokerError("trim failed")

        monkeypatch.setattr(broker, "trim", failing_trim)
        collector = Collector()
        options = SubscriptionOptions(group=group, processing_timeout=0.5)
        await broker.subscribe(topic, collector, options)
        # Then the entry is delivered at the first reclaim, as its second attempt, not after
        # a lost claim and a further processingTimeout
        (got,) = await collector.wait_for(1)
        assert failures and (got.data, got.attempt) == (b"orphan", 2)


async def test_wait_replicas_fails_a_publish_no_replica_acknowledged(
    redis_server: RedisServer,
) -> None:
    # Given a component that wants every publish on one replica, and a server without any
    settings = redis_server.settings(wait_replicas=1, wait_timeout=0.1)
    async with RedisBroker(settings) as broker:
        # When it publishes, Then the publish fails instead of claiming a durability it lacks
        with pytest.raises(PublishError, match="only 0 of 1 replicas"):
            await broker.publish(unique(), [Message(data=b"x")])


async def test_wait_aof_on_a_server_without_waitaof_refuses_to_connect(
    redis_server: RedisServer, raw: aioredis.Redis
) -> None:
    # Given a server that has no WAITAOF (Redis before 7.2, as on this machine)
    version = str((await raw.info("server"))["redis_version"])
    if tuple(int(p) for p in version.split(".")[:2]) >= (7, 2):
        pytest.skip(f"redis-server {version} has WAITAOF: the refusal cannot be shown on it")
    broker = RedisBroker(redis_server.settings(wait_aof=True))
    # When a component asks for waitAOF, Then the broker says why at start instead of failing
    # (or silently not waiting on) every publish
    with pytest.raises(ConfigError, match="WAITAOF"):
        await broker.connect()


async def test_without_wait_options_a_publish_returns_on_the_xadd_reply(
    redis_server: RedisServer, raw: aioredis.Redis
) -> None:
    topic = unique()
    async with RedisBroker(redis_server.settings()) as broker:
        await broker.publish(topic, [Message(data=b"x")])
    assert await raw.xlen(topic) == 1
