"""The RabbitMQ backend for the conformance suite, on the shared broker at 127.0.0.1:5672.

Test topics are unique per test (``t.<hex>``), so every queue and exchange a test declares is its
own; the brokers record what they declared and the fixture deletes all of it afterwards.
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Iterable
from typing import Any

import aio_pika
import aiormq
import pytest

from bus.rabbitmq import RabbitBroker, RabbitSettings
from tests.backends import BackendEnv, missing_service

RABBITMQ_URL = os.environ.get("OMNIBUS_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")


def rabbitmq_reachable(host: str = "127.0.0.1", port: int = 5672) -> bool:
    """True if something accepts connections on the broker's port."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


async def delete_topology(url: str, queues: Iterable[str], exchanges: Iterable[str]) -> list[str]:
    """Delete the named queues and exchanges; returns the names that could not be deleted."""
    failed: list[str] = []
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        for name in sorted(set(queues)):
            try:
                await channel.queue_delete(name)
            except aiormq.exceptions.AMQPError:
                failed.append(name)
                channel = await connection.channel()
        for name in sorted(set(exchanges)):
            try:
                await channel.exchange_delete(name)
            except aiormq.exceptions.AMQPError:
                failed.append(name)
                channel = await connection.channel()
    finally:
        await connection.close()
    return failed


async def queue_exists(url: str, name: str) -> bool:
    """True if the queue ``name`` exists (passive declare on a throwaway channel)."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        try:
            await channel.declare_queue(name, passive=True)
            return True
        except aiormq.exceptions.ChannelNotFoundEntity:
            return False
    finally:
        await connection.close()


@pytest.fixture
async def backend_rabbitmq() -> AsyncIterator[BackendEnv]:
    if not rabbitmq_reachable():
        missing_service("RabbitMQ is not reachable at 127.0.0.1:5672")
    made: list[RabbitBroker] = []
    settings = RabbitSettings(url=RABBITMQ_URL)

    def new_broker(**kwargs: Any) -> RabbitBroker:
        broker = RabbitBroker(settings, **kwargs)
        made.append(broker)
        return broker

    async def retained(topic: str) -> int:
        names = {q for b in made for q in b.declared_queues if q.endswith(f"-{topic}")}
        connection = await aio_pika.connect(RABBITMQ_URL)
        try:
            channel = await connection.channel()
            total = 0
            for name in names:
                queue = await channel.declare_queue(name, passive=True)
                total += queue.declaration_result.message_count or 0
            return total
        finally:
            await connection.close()

    yield BackendEnv("rabbitmq", new_broker, durable=True, retained=retained)
    for broker in made:
        await broker.close()
    queues = {q for b in made for q in b.declared_queues}
    exchanges = {e for b in made for e in b.declared_exchanges}
    failed = await delete_topology(RABBITMQ_URL, queues, exchanges)
    assert not failed, f"could not delete {failed}"
