"""The baselines of scenario ``rpc``: raw redis-py, raw aio-pika and FastStream request/reply.

Each is an async context manager yielding ``call(body) -> reply body`` on two clients of its own
(a server echoing the body and a caller), on the run's private redis-server or shared RabbitMQ:

- redis-py: callers LPUSH ``reply channel, correlation id, body`` onto a list (the requests of
  concurrent callers together, one LPUSH of many values per turn); a server loop takes
  up to 100 requests per BLMPOP and PUBLISHes each reply (pipelined) to the caller's own Pub/Sub
  channel, where one listener resolves the futures by correlation id;
- aio-pika: an RPC server consuming a queue, replying through the default exchange, and callers
  on one channel with direct reply-to (``amq.rabbitmq.reply-to``) and aio-pika's default
  publisher confirms;
- FastStream: a list subscriber (64 workers) or a queue subscriber returning the body, and
  FastStream's ``broker.request`` on a second FastStream broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

CALL_TIMEOUT = 10.0
SERVER_CONCURRENCY = 100
FASTSTREAM_WORKERS = 64
REPLY_TO = "amq.rabbitmq.reply-to"

Call = Callable[[bytes], Awaitable[bytes]]


# -- raw redis-py -------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def raw_redis(url: str, name: str) -> AsyncIterator[Call]:
    """Raw redis-py request/reply on the list ``name``."""
    import redis.asyncio as aioredis

    server, caller = aioredis.Redis.from_url(url), aioredis.Redis.from_url(url)
    channel = f"{name}.reply.{uuid.uuid4().hex[:8]}".encode()
    waiting: dict[bytes, asyncio.Future[bytes]] = {}
    pubsub = caller.pubsub()
    await pubsub.subscribe(channel)

    async def listen() -> None:
        async for message in pubsub.listen():
            if message["type"] == b"message" or message["type"] == "message":
                correlation, _, data = message["data"].partition(b"\n")
                future = waiting.pop(correlation, None)
                if future is not None and not future.done():
                    future.set_result(data)

    running = True

    async def serve() -> None:
        # A flag as well as the cancel: redis-py can swallow a cancellation that lands in BLMPOP.
        while running:
            popped: Any = await server.blmpop(0.5, 1, name, direction="RIGHT", count=100)
            if not popped:
                continue
            pipe = server.pipeline(transaction=False)
            for request in popped[1]:
                reply_channel, correlation, data = request.split(b"\n", 2)
                pipe.publish(reply_channel, correlation + b"\n" + data)
            await pipe.execute()

    outbox: list[bytes] = []
    queued = asyncio.Event()

    async def send() -> None:
        # The requests of concurrent callers leave together, one LPUSH per turn of the loop: at
        # 64 callers redis-py's connection pool costs more than the commands (64 concurrent
        # LPUSHes ran at half the rate of one at a time), and a tuned client would batch them.
        while running:
            await queued.wait()
            queued.clear()
            batch = outbox.copy()
            outbox.clear()
            await caller.lpush(name, *batch)

    async def call(data: bytes) -> bytes:
        correlation = uuid.uuid4().hex.encode()
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        waiting[correlation] = future
        outbox.append(b"\n".join((channel, correlation, data)))
        queued.set()
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                return await future
        finally:
            waiting.pop(correlation, None)

    tasks = [asyncio.create_task(job()) for job in (listen, serve, send)]
    try:
        yield call
    finally:
        running = False
        await _cancel(tasks)
        await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]
        await caller.delete(name)
        await caller.aclose()
        await server.aclose()


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# -- raw aio-pika -------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def raw_rabbit(url: str, name: str) -> AsyncIterator[Call]:
    """Raw aio-pika request/reply on the queue ``name``, replies by direct reply-to."""
    import aio_pika
    from aio_pika.abc import AbstractIncomingMessage

    server_connection, caller_connection = await aio_pika.connect(url), await aio_pika.connect(url)
    try:
        server_channel = await server_connection.channel(publisher_confirms=False)
        await server_channel.set_qos(prefetch_count=SERVER_CONCURRENCY)
        queue = await server_channel.declare_queue(name, auto_delete=True)

        async def on_request(request: AbstractIncomingMessage) -> None:
            reply = aio_pika.Message(request.body, correlation_id=request.correlation_id)
            address = request.reply_to or ""  # a caller that is gone gets nothing, as on our bus
            await server_channel.default_exchange.publish(reply, address, mandatory=False)

        await queue.consume(on_request, no_ack=True)
        channel = await caller_connection.channel()  # aio-pika's default: publisher confirms
        waiting: dict[str, asyncio.Future[bytes]] = {}

        async def on_reply(reply: AbstractIncomingMessage) -> None:
            future = waiting.pop(reply.correlation_id or "", None)
            if future is not None and not future.done():
                future.set_result(reply.body)

        inbox = await channel.declare_queue(REPLY_TO, passive=True)
        await inbox.consume(on_reply, no_ack=True)

        async def call(data: bytes) -> bytes:
            correlation = uuid.uuid4().hex
            future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
            waiting[correlation] = future
            request = aio_pika.Message(data, correlation_id=correlation, reply_to=REPLY_TO)
            try:
                await channel.default_exchange.publish(request, routing_key=name)
                async with asyncio.timeout(CALL_TIMEOUT):
                    return await future
            finally:
                waiting.pop(correlation, None)

        yield call
    finally:
        await caller_connection.close()
        await server_connection.close()


# -- FastStream ---------------------------------------------------------------------------------


async def _raw_body(message: Any) -> bytes:
    """FastStream's decoder turns a JSON body into a dict; the echo wants the bytes as they came."""
    return bytes(message.body)


@contextlib.asynccontextmanager
async def faststream_redis(url: str, name: str) -> AsyncIterator[Call]:
    """FastStream's Redis request/reply on the list ``name``."""
    from faststream.redis import ListSub, RedisBroker

    server = RedisBroker(url, logger=None)  # type: ignore[arg-type]  # None: no per-message log
    # Its request holds a Pub/Sub connection per call in flight: more than redis-py's default
    # pool of 100 once the replies' publishes join them.
    caller = RedisBroker(url, logger=None, max_connections=4 * FASTSTREAM_WORKERS)  # type: ignore[arg-type]

    @server.subscriber(list=ListSub(name), max_workers=FASTSTREAM_WORKERS, decoder=_raw_body)
    async def echo(body: bytes) -> bytes:
        return body

    async def call(data: bytes) -> bytes:
        reply = await caller.request(data, list=name, timeout=CALL_TIMEOUT)
        return bytes(reply.body)

    await server.start()
    try:
        await caller.connect()
        yield call
    finally:
        await caller.stop()
        await server.stop()


@contextlib.asynccontextmanager
async def faststream_rabbit(url: str, name: str) -> AsyncIterator[Call]:
    """FastStream's RabbitMQ request/reply on the queue ``name``."""
    from faststream.rabbit import RabbitBroker, RabbitQueue

    server = RabbitBroker(url, logger=None)
    caller = RabbitBroker(url, logger=None)

    @server.subscriber(RabbitQueue(name, auto_delete=True), decoder=_raw_body)
    async def echo(body: bytes) -> bytes:
        return body

    async def call(data: bytes) -> bytes:
        reply = await caller.request(data, queue=name, timeout=CALL_TIMEOUT)
        return bytes(reply.body)

    await server.start()
    try:
        await caller.connect()
        yield call
    finally:
        await caller.stop()
        await server.stop()
