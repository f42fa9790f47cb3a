"""A consumer process for the Redis chaos tests: records every delivered id, then acks it.

    python -m tests.redis_consumer --port P --topic T --group G --out FILE [--timeout S]

Each id is written with ``os.write`` before its handler returns SUCCESS, so an id whose entry was
acked is in the file even if the process is SIGKILLed right after (the kernel holds the write).
Prints ``ready`` once subscribed, then runs until killed.
"""

from __future__ import annotations

import argparse
import asyncio
import os

from bus.message import Message, Outcome
from bus.options import SubscriptionOptions
from bus.redis import RedisBroker
from bus.redis.settings import RedisSettings


async def consume(args: argparse.Namespace) -> None:
    """Subscribe and record ids until the process is killed."""
    out = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    settings = RedisSettings(host="127.0.0.1", port=args.port, redeliver_interval=0.5)

    async def record(message: Message) -> Outcome:
        os.write(out, message.id.encode() + b"\n")
        return Outcome.SUCCESS

    options = SubscriptionOptions(group=args.group, processing_timeout=args.timeout)
    async with RedisBroker(settings) as broker:
        await broker.subscribe(args.topic, record, options)
        print("ready", flush=True)
        await asyncio.Event().wait()


def main() -> None:
    """Parse the arguments and consume."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--timeout", type=float, default=2.0, help="processingTimeout, seconds")
    asyncio.run(consume(parser.parse_args()))


if __name__ == "__main__":
    main()
