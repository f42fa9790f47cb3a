"""The baselines measured in the same run: raw redis-py, raw aio-pika and FastStream.

Bus only (scenario 4), each on its own stream or queue prefilled with the same payloads:

- raw redis-py: XREADGROUP COUNT 100 + one XACK per batch (hiredis parser);
- raw aio-pika: manual acks, prefetch 200, one ``multiple=True`` ack per 100 messages;
- FastStream: a Redis stream consumer group (per message, and ``batch=True`` with 100 records)
  and a RabbitMQ queue, with FastStream's default ack policy (ack after the handler returns).

End-to-end (the ceiling of scenario 2), a producer process and a consumer process:

- redis-py: the producer pipelines XADD in batches of 100; the consumer reads as above;
- aio-pika: the producer publishes persistent messages with confirms, 200 in flight; the consumer
  acks as above.  Throughput = messages / (last ack - first publish), one monotonic clock.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

import redis.asyncio as aredis

from benchmarks.busonly import Drain

READ_COUNT = 100
PREFETCH = 200
IN_FLIGHT = 200
CONSUMER = "bench-consumer"


# -- Redis ----------------------------------------------------------------------------------


async def redis_fill(url: str, stream: str, group: str, bodies: list[bytes]) -> Drain:
    """Create ``group`` at the start of ``stream`` and XADD every body, pipelined by 100."""
    client = aredis.Redis.from_url(url)
    try:
        await client.xgroup_create(stream, group, id="0", mkstream=True)
        started, cpu = time.perf_counter(), time.process_time()
        for first in range(0, len(bodies), READ_COUNT):
            pipe = client.pipeline(transaction=False)
            for body in bodies[first : first + READ_COUNT]:
                pipe.xadd(stream, {"data": body})
            await pipe.execute()
        return Drain(len(bodies), time.perf_counter() - started, time.process_time() - cpu)
    finally:
        await client.aclose()


async def raw_redis_consume(
    url: str, stream: str, group: str, expected: int, timeout: float
) -> Drain:
    """XREADGROUP COUNT 100 + one XACK per batch until ``expected`` entries are acked."""
    client = aredis.Redis.from_url(url)
    seen: set[bytes] = set()
    try:
        started, cpu = time.perf_counter(), time.process_time()
        deadline = time.monotonic() + timeout
        while len(seen) < expected:
            if time.monotonic() > deadline:
                raise TimeoutError(f"raw redis-py saw {len(seen)} of {expected}")
            reply: Any = await client.xreadgroup(
                group, CONSUMER, {stream: ">"}, count=READ_COUNT, block=1000
            )
            for _name, entries in reply or ():
                ids = [entry_id for entry_id, _fields in entries]
                seen.update(ids)
                if ids:
                    await client.xack(stream, group, *ids)
        return Drain(len(seen), time.perf_counter() - started, time.process_time() - cpu)
    finally:
        await client.aclose()


async def faststream_redis_consume(
    url: str, stream: str, group: str, expected: int, timeout: float, *, batch: bool
) -> Drain:
    """FastStream's stream subscriber in ``group`` until ``expected`` entries are acked."""
    from faststream.redis import RedisBroker, StreamSub

    broker = RedisBroker(url, logger=None)  # type: ignore[arg-type]  # None: no per-message log
    handled = 0
    done = asyncio.Event()
    sub = StreamSub(stream, group=group, consumer=CONSUMER, batch=batch, max_records=READ_COUNT)

    if batch:

        @broker.subscriber(stream=sub)  # type: ignore[untyped-decorator]
        async def handle_batch(body: list[Any]) -> None:
            nonlocal handled
            handled += len(body)
            if handled >= expected:
                done.set()

    else:

        @broker.subscriber(stream=sub)  # type: ignore[untyped-decorator]
        async def handle_one(body: Any) -> None:
            nonlocal handled
            handled += 1
            if handled >= expected:
                done.set()

    started, cpu = time.perf_counter(), time.process_time()
    await broker.start()
    try:
        await asyncio.wait_for(done.wait(), timeout)
        await _redis_acked(url, stream, group, timeout)
    finally:
        await broker.stop()
    return Drain(handled, time.perf_counter() - started, time.process_time() - cpu)


async def _redis_acked(url: str, stream: str, group: str, timeout: float) -> None:
    """Wait until ``group`` has nothing pending: the last acks have reached the server."""
    client = aredis.Redis.from_url(url)
    try:
        deadline = time.monotonic() + timeout
        while (await client.xpending(stream, group))["pending"]:
            if time.monotonic() > deadline:
                raise TimeoutError("acks did not arrive")
            await asyncio.sleep(0.002)
    finally:
        await client.aclose()


# -- RabbitMQ -------------------------------------------------------------------------------


async def rabbit_fill(url: str, queue_name: str, bodies: list[bytes]) -> Drain:
    """Declare a durable queue and publish persistent, confirmed messages, 200 in flight."""
    import aio_pika

    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await channel.declare_queue(queue_name, durable=True)
        started, cpu = time.perf_counter(), time.process_time()
        await _publish_window(channel, queue_name, bodies)
        return Drain(len(bodies), time.perf_counter() - started, time.process_time() - cpu)


async def _publish_window(channel: Any, routing_key: str, bodies: list[bytes]) -> None:
    import aio_pika

    exchange = channel.default_exchange
    for first in range(0, len(bodies), IN_FLIGHT):
        await asyncio.gather(
            *(
                exchange.publish(
                    aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                    routing_key=routing_key,
                )
                for body in bodies[first : first + IN_FLIGHT]
            )
        )


async def raw_rabbit_consume(url: str, queue_name: str, expected: int, timeout: float) -> Drain:
    """Manual acks, prefetch 200, one multiple-ack per 100 messages, until ``expected``."""
    import aio_pika

    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=PREFETCH)
        queue = await channel.declare_queue(queue_name, durable=True)
        handled = 0
        done = asyncio.Event()

        async def on_message(message: Any) -> None:
            nonlocal handled
            handled += 1
            if handled % READ_COUNT == 0 or handled >= expected:
                await message.ack(multiple=True)
            if handled >= expected:
                done.set()

        started, cpu = time.perf_counter(), time.process_time()
        tag = await queue.consume(on_message, no_ack=False)
        await asyncio.wait_for(done.wait(), timeout)
        await queue.cancel(tag)
        return Drain(handled, time.perf_counter() - started, time.process_time() - cpu)


async def faststream_rabbit_consume(
    url: str, queue_name: str, expected: int, timeout: float
) -> Drain:
    """FastStream's queue subscriber (its defaults: ack after the handler) until ``expected``."""
    from faststream.rabbit import RabbitBroker, RabbitQueue

    broker = RabbitBroker(url, logger=None)  # None: no per-message log
    handled = 0
    done = asyncio.Event()

    @broker.subscriber(RabbitQueue(queue_name, durable=True))
    async def handle(body: Any) -> None:
        nonlocal handled
        handled += 1
        if handled >= expected:
            done.set()

    started, cpu = time.perf_counter(), time.process_time()
    await broker.start()
    try:
        await asyncio.wait_for(done.wait(), timeout)
    finally:
        await broker.stop()
    return Drain(handled, time.perf_counter() - started, time.process_time() - cpu)


# -- end-to-end ceilings: a producer process and a consumer process --------------------------


def end_to_end(kind: str, url: str, name: str, bodies: list[bytes], timeout: float) -> Drain:
    """Raw end-to-end throughput of ``kind`` (``redis`` or ``rabbitmq``) across two processes."""
    if kind == "rabbitmq":
        asyncio.run(_declare_rabbit_queue(url, name))
    else:
        asyncio.run(_create_redis_group(url, name))
    with ProcessPoolExecutor(2, mp_context=get_context("spawn")) as pool:
        start_at = time.monotonic() + 1.0  # both processes are up and connected by then
        consumer = pool.submit(_consumer_process, kind, url, name, len(bodies), start_at, timeout)
        producer = pool.submit(_producer_process, kind, url, name, bodies, start_at)
        first_ns, producer_cpu = producer.result(timeout=timeout + 30)
        last_ns, consumer_cpu = consumer.result(timeout=timeout + 30)
    elapsed = (last_ns - first_ns) / 1e9
    return Drain(len(bodies), elapsed, producer_cpu + consumer_cpu)


async def _declare_rabbit_queue(url: str, name: str) -> None:
    import aio_pika

    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(name, durable=True)


async def _create_redis_group(url: str, name: str) -> None:
    client = aredis.Redis.from_url(url)
    try:
        await client.xgroup_create(name, name, id="0", mkstream=True)
    finally:
        await client.aclose()


def _producer_process(
    kind: str, url: str, name: str, bodies: list[bytes], start_at: float
) -> tuple[int, float]:
    import uvloop

    return uvloop.run(_produce(kind, url, name, bodies, start_at))


def _consumer_process(
    kind: str, url: str, name: str, expected: int, start_at: float, timeout: float
) -> tuple[int, float]:
    import uvloop

    return uvloop.run(_consume(kind, url, name, expected, start_at, timeout))


async def _produce(
    kind: str, url: str, name: str, bodies: list[bytes], start_at: float
) -> tuple[int, float]:
    """(monotonic ns of the first publish, CPU seconds spent)."""
    if kind == "rabbitmq":
        import aio_pika

        connection = await aio_pika.connect(url)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            await asyncio.sleep(max(start_at - time.monotonic(), 0))
            first, cpu = time.monotonic_ns(), time.process_time()
            await _publish_window(channel, name, bodies)
            return first, time.process_time() - cpu
    client = aredis.Redis.from_url(url)
    try:
        await client.ping()
        await asyncio.sleep(max(start_at - time.monotonic(), 0))
        first, cpu = time.monotonic_ns(), time.process_time()
        for index in range(0, len(bodies), READ_COUNT):
            pipe = client.pipeline(transaction=False)
            for body in bodies[index : index + READ_COUNT]:
                pipe.xadd(name, {"data": body})
            await pipe.execute()
        return first, time.process_time() - cpu
    finally:
        await client.aclose()


async def _consume(
    kind: str, url: str, name: str, expected: int, start_at: float, timeout: float
) -> tuple[int, float]:
    """(monotonic ns of the last ack, CPU seconds spent)."""
    cpu = time.process_time()
    if kind == "rabbitmq":
        await raw_rabbit_consume(url, name, expected, timeout)
    else:
        await raw_redis_consume(url, name, name, expected, timeout)
    return time.monotonic_ns(), time.process_time() - cpu
