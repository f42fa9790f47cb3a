"""End-to-end throughput of the Redis Streams broker against raw redis-py doing the same work.

    python -m benchmarks.redis_vs_raw [--count N] [--size 1024] [--rounds 3] [--url redis://...]

Without ``--url`` a private redis-server (no persistence) is started on a free port and stopped
at the end; with it, only keys named ``bench.*`` by this run are written, and deleted afterwards.
Both sides, in one run, on a fresh stream each: ``PUBLISHERS`` concurrent publishers send
batches of ``BATCH`` messages of ``size`` bytes (each entry ``data`` + ``metadata`` JSON with a
message id, Dapr's wire format); one consumer group reads and acks every message.  The clock runs
from the first publish until the last message was handled *and acked*.  Both run ``rounds``
times, alternating, and the medians are compared (the machine may be shared).

- omnibus: ``RedisBroker.publish`` (one call per batch; concurrent calls coalesced into one
  pipeline) and a subscription (Dispatcher, 200 handlers, reads of 100) returning SUCCESS;
- raw: a redis-py pipeline of ``BATCH`` XADDs per batch, and a loop of XREADGROUP COUNT 100
  BLOCK followed by one XACK of the ids read.

:func:`measure` is what ``omnibus bench`` imports.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import orjson
import redis.asyncio as aioredis

from benchmarks.services import RedisServer
from bus.message import Message, Outcome
from bus.options import SubscriptionOptions
from bus.redis import RedisBroker
from bus.redis.settings import RedisSettings

BATCH = 100
PUBLISHERS = 4
READ = 100
CONCURRENCY = 200
TARGET_RATIO = 0.7


def _shares(count: int) -> list[range]:
    starts = range(0, count, BATCH)
    return [starts[i::PUBLISHERS] for i in range(PUBLISHERS)]


def _settings(url: str) -> RedisSettings:
    parsed = urlparse(url)
    db = int(parsed.path.lstrip("/") or 0)
    return RedisSettings(host=parsed.hostname or "127.0.0.1", port=parsed.port or 6379, db=db)


async def _drained(client: aioredis.Redis, topic: str, group: str) -> None:
    """Wait until the group has no pending (delivered, unacked) entry left."""
    while (await client.xpending(topic, group))["pending"]:
        await asyncio.sleep(0.001)


async def _omnibus(url: str, count: int, size: int) -> float:
    topic, payload = f"bench.{uuid.uuid4().hex[:12]}", os.urandom(size)
    settings = _settings(url)
    publisher, consumer = RedisBroker(settings), RedisBroker(settings)
    probe = aioredis.Redis.from_url(url)
    done, handled = asyncio.Event(), 0

    async def handler(message: Message) -> Outcome:
        nonlocal handled
        handled += 1
        if handled >= count:
            done.set()
        return Outcome.SUCCESS

    async def publish(starts: range) -> None:
        for start in starts:
            n = min(BATCH, count - start)
            await publisher.publish(topic, [Message(data=payload) for _ in range(n)])

    try:
        await publisher.connect()
        await consumer.connect()
        options = SubscriptionOptions(group="bench", concurrency=CONCURRENCY, batch_size=READ)
        await consumer.subscribe(topic, handler, options)
        started = time.perf_counter()
        await asyncio.gather(*(publish(share) for share in _shares(count)))
        await done.wait()
        await _drained(probe, topic, "bench")
        elapsed = time.perf_counter() - started
    finally:
        await consumer.close()
        await publisher.close()
        await probe.delete(topic, f"omnibus:retry:{topic}:bench")
        await probe.aclose()
    return count / elapsed


async def _raw(url: str, count: int, size: int) -> float:
    topic, payload = f"bench.raw.{uuid.uuid4().hex[:12]}", os.urandom(size)
    publisher, consumer = aioredis.Redis.from_url(url), aioredis.Redis.from_url(url)
    await consumer.xgroup_create(topic, "bench", id="0", mkstream=True)
    done = asyncio.Event()

    async def publish(starts: range) -> None:
        for start in starts:
            pipe = publisher.pipeline(transaction=False)
            for _ in range(min(BATCH, count - start)):
                meta = orjson.dumps({"omnibus-id": uuid.uuid4().hex})
                pipe.xadd(topic, {"data": payload, "metadata": meta})
            await pipe.execute()

    async def consume() -> None:
        handled = 0
        while handled < count:
            reply: Any = await consumer.xreadgroup(
                "bench", "raw", {topic: ">"}, count=READ, block=1000
            )
            if not reply:
                continue
            entries = reply[0][1]
            handled += len(entries)
            await consumer.xack(topic, "bench", *(entry_id for entry_id, _ in entries))
        done.set()

    try:
        reader = asyncio.create_task(consume())
        started = time.perf_counter()
        await asyncio.gather(*(publish(share) for share in _shares(count)))
        await done.wait()
        elapsed = time.perf_counter() - started
        await reader
    finally:
        await consumer.delete(topic)
        await consumer.aclose()
        await publisher.aclose()
    return count / elapsed


async def _rounds(url: str, count: int, size: int, rounds: int) -> dict[str, Any]:
    raw_runs: list[float] = []
    ours_runs: list[float] = []
    for _ in range(rounds):
        raw_runs.append(await _raw(url, count, size))
        ours_runs.append(await _omnibus(url, count, size))
    ours, raw = statistics.median(ours_runs), statistics.median(raw_runs)
    return {
        "backend": "redis",
        "count": count,
        "size": size,
        "rounds": rounds,
        "omnibus_msgs_per_s": round(ours, 1),
        "raw_redis_py_msgs_per_s": round(raw, 1),
        "ratio": round(ours / raw, 3),
        "target_ratio": TARGET_RATIO,
        "omnibus_runs": [round(r, 1) for r in ours_runs],
        "raw_redis_py_runs": [round(r, 1) for r in raw_runs],
    }


async def measure_async(
    count: int = 20_000, size: int = 1024, url: str | None = None, rounds: int = 3
) -> dict[str, Any]:
    """Both figures of one run: ``rounds`` alternating pairs (raw first), medians compared."""
    if url is not None:
        return await _rounds(url, count, size, rounds)
    with tempfile.TemporaryDirectory(prefix="omnibus-bench-redis-") as workdir:
        server = RedisServer(Path(workdir))
        await asyncio.to_thread(server.start)
        try:
            return await _rounds(f"redis://127.0.0.1:{server.port}/0", count, size, rounds)
        finally:
            server.stop()


def measure(
    count: int = 20_000, size: int = 1024, url: str | None = None, rounds: int = 3
) -> dict[str, Any]:
    """End-to-end msgs/s (medians) of omnibus and of raw redis-py, and their ratio."""
    return asyncio.run(measure_async(count, size, url, rounds))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--url", default=None, help="redis://host:port/db (default: private)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating pairs; medians")
    args = parser.parse_args()
    result = measure(args.count, args.size, args.url, args.rounds)
    print(f"omnibus      {result['omnibus_msgs_per_s']:>10,.0f} msgs/s")
    print(f"raw redis-py {result['raw_redis_py_msgs_per_s']:>10,.0f} msgs/s")
    print(f"ratio        {result['ratio']:>10.2f} (target >= {result['target_ratio']})")
    print(f"runs: omnibus {result['omnibus_runs']}, raw {result['raw_redis_py_runs']}")


if __name__ == "__main__":
    main()
