"""A consumer process for the RabbitMQ chaos tests: records every id it handled, then acks it.

``python -m tests.rabbitmq_consumer URL TOPIC GROUP OUTFILE`` subscribes, prints ``ready`` once
the subscription is open, and appends ``<id> <attempt>`` to OUTFILE (one ``write`` per message, so
nothing is lost when the process is SIGKILLed) before returning SUCCESS.  It runs until killed.
"""

from __future__ import annotations

import asyncio
import os
import sys

from bus.message import Message, Outcome
from bus.options import SubscriptionOptions
from bus.rabbitmq import RabbitBroker, RabbitSettings


async def consume(url: str, topic: str, group: str, outfile: str) -> None:
    """Consume until the process is killed."""
    fd = os.open(outfile, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    async def record(message: Message) -> Outcome:
        os.write(fd, f"{message.id} {message.attempt}\n".encode())
        return Outcome.SUCCESS

    async with RabbitBroker(RabbitSettings(url=url)) as broker:
        options = SubscriptionOptions(group=group, concurrency=50, batch_size=100)
        await broker.subscribe(topic, record, options)
        print("ready", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(consume(*sys.argv[1:5]))
