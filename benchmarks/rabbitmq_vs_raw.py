"""End-to-end throughput of the RabbitMQ broker against raw aio-pika doing the same work.

    python -m benchmarks.rabbitmq_vs_raw [--count N] [--size 1024] [--rounds 3] [--url amqp://...]

Both sides, in one run, on unique names deleted afterwards: 1 KB persistent messages to a durable
fanout exchange and a durable queue bound to it; ``PUBLISHERS`` concurrent publishers publish
batches of ``BATCH`` messages, each batch published at once with its confirms awaited together;
a consumer on its own connection, prefetch 200, manual acks coalesced with ``multiple=True``.
The clock runs from the first publish until the consumer has handled the last message.  Both
run ``rounds`` times, alternating, and the medians are compared (the machine may be shared).

- omnibus: ``RabbitBroker.publish`` and a subscription (Dispatcher, 100 handlers) that returns
  SUCCESS for every message;
- raw: ``aio_pika`` exchange publishes and a ``queue.consume`` callback acking every
  ``RAW_ACK_EVERY`` messages with ``multiple=True``.

:func:`measure` is what ``omnibus bench`` imports.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from bus.message import Message, Outcome
from bus.options import SubscriptionOptions
from bus.rabbitmq import DEFAULT_URL, RabbitBroker, RabbitSettings

BATCH = 100
PUBLISHERS = 4
PREFETCH = 200
RAW_ACK_EVERY = 50


def _shares(count: int) -> list[range]:
    starts = range(0, count, BATCH)
    return [starts[i::PUBLISHERS] for i in range(PUBLISHERS)]


async def _omnibus(url: str, count: int, size: int) -> float:
    topic, payload = f"bench.{uuid.uuid4().hex[:12]}", os.urandom(size)
    settings = RabbitSettings(url=url, prefetch_count=PREFETCH)
    publisher, consumer = RabbitBroker(settings), RabbitBroker(settings)
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
        options = SubscriptionOptions(group="bench", concurrency=100, batch_size=100)
        await consumer.subscribe(topic, handler, options)
        started = time.perf_counter()
        await asyncio.gather(*(publish(share) for share in _shares(count)))
        await done.wait()
        elapsed = time.perf_counter() - started
    finally:
        await consumer.close()
        await publisher.close()
        await _delete(url, publisher.declared_queues | consumer.declared_queues, {topic})
    return count / elapsed


async def _raw(url: str, count: int, size: int) -> float:
    name, payload = f"bench.raw.{uuid.uuid4().hex[:12]}", os.urandom(size)
    pub_conn = await aio_pika.connect_robust(url)
    sub_conn = await aio_pika.connect_robust(url)
    try:
        pub_channel = await pub_conn.channel(publisher_confirms=True)
        exchange = await pub_channel.declare_exchange(name, "fanout", durable=True)
        sub_channel = await sub_conn.channel()
        await sub_channel.set_qos(prefetch_count=PREFETCH)
        queue = await sub_channel.declare_queue(f"bench-{name}", durable=True)
        await queue.bind(exchange)
        done, handled = asyncio.Event(), 0

        async def on_message(message: AbstractIncomingMessage) -> None:
            nonlocal handled
            handled += 1
            if handled % RAW_ACK_EVERY == 0 or handled >= count:
                await message.ack(multiple=True)
            if handled >= count:
                done.set()

        async def publish(starts: range) -> None:
            for start in starts:
                n = min(BATCH, count - start)
                await asyncio.gather(
                    *(
                        exchange.publish(
                            aio_pika.Message(
                                payload,
                                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                                message_id=uuid.uuid4().hex,
                            ),
                            routing_key="",
                        )
                        for _ in range(n)
                    )
                )

        await queue.consume(on_message, no_ack=False)
        started = time.perf_counter()
        await asyncio.gather(*(publish(share) for share in _shares(count)))
        await done.wait()
        elapsed = time.perf_counter() - started
    finally:
        await sub_conn.close()
        await pub_conn.close()
        await _delete(url, {f"bench-{name}"}, {name})
    return count / elapsed


async def _delete(url: str, queues: set[str], exchanges: set[str]) -> None:
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        for queue in sorted(queues):
            await channel.queue_delete(queue)
        for exchange in sorted(exchanges | {q for q in queues if q.endswith("@held")}):
            await channel.exchange_delete(exchange)
    finally:
        await connection.close()


async def measure_async(
    count: int = 10_000, size: int = 1024, url: str = DEFAULT_URL, rounds: int = 3
) -> dict[str, Any]:
    """Both figures of one run: ``rounds`` alternating pairs (raw first), medians compared."""
    raw_runs: list[float] = []
    ours_runs: list[float] = []
    for _ in range(rounds):
        raw_runs.append(await _raw(url, count, size))
        ours_runs.append(await _omnibus(url, count, size))
    ours, raw = statistics.median(ours_runs), statistics.median(raw_runs)
    return {
        "backend": "rabbitmq",
        "count": count,
        "size": size,
        "rounds": rounds,
        "omnibus_msgs_per_s": round(ours, 1),
        "raw_aio_pika_msgs_per_s": round(raw, 1),
        "ratio": round(ours / raw, 3),
        "target_ratio": 0.8,
        "omnibus_runs": [round(r, 1) for r in ours_runs],
        "raw_aio_pika_runs": [round(r, 1) for r in raw_runs],
    }


def measure(
    count: int = 10_000, size: int = 1024, url: str = DEFAULT_URL, rounds: int = 3
) -> dict[str, Any]:
    """End-to-end msgs/s (medians) of omnibus and of raw aio-pika, and their ratio."""
    return asyncio.run(measure_async(count, size, url, rounds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--rounds", type=int, default=3, help="alternating pairs; medians")
    args = parser.parse_args()
    result = measure(args.count, args.size, args.url, args.rounds)
    print(f"omnibus     {result['omnibus_msgs_per_s']:>10,.0f} msgs/s")
    print(f"raw aio-pika{result['raw_aio_pika_msgs_per_s']:>11,.0f} msgs/s")
    print(f"ratio       {result['ratio']:>10.2f} (target >= {result['target_ratio']})")
    print(f"runs: omnibus {result['omnibus_runs']}, raw {result['raw_aio_pika_runs']}")


if __name__ == "__main__":
    main()
