"""A second OS process on a SQLite bus file, driven by tests/test_sqlite.py.

    python -m tests.sqlite_peer consume DB TOPIC GROUP OUT [--lease SECONDS] [--delay SECONDS]
    python -m tests.sqlite_peer publish DB TOPIC COUNT [--prefix P] [--hold]
    python -m tests.sqlite_peer serve DB TOPIC

``consume`` appends the id of every message its handler sees to OUT (one line each, written
before the handler works ``--delay`` seconds and returns, so a SIGKILL after the write still
counts the delivery) and prints ``ready`` once subscribed.  ``publish`` publishes COUNT messages
with ids ``<prefix>-<i>`` in batches of 100, then exits (with ``--hold``: prints ``ready`` and
waits to be killed).  ``serve`` answers requests on TOPIC with the upper-cased data.
``consume``, ``serve`` and ``publish --hold`` run until SIGTERM, then close the broker cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from pathlib import Path

from bus.message import Message, Outcome
from bus.options import SubscriptionOptions
from bus.sqlite import SqliteBroker, SqliteSettings


async def _until_terminated() -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()


async def consume(db: Path, topic: str, group: str, out: Path, lease: float, delay: float) -> None:
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    async def record(message: Message) -> Outcome:
        os.write(fd, f"{message.id}\n".encode())
        if delay:
            await asyncio.sleep(delay)
        return Outcome.SUCCESS

    options = SubscriptionOptions(group=group, concurrency=50, processing_timeout=lease)
    async with SqliteBroker(SqliteSettings(path=db)) as broker:
        await broker.subscribe(topic, record, options)
        await _until_terminated()
    os.close(fd)


async def publish(db: Path, topic: str, count: int, prefix: str, hold: bool) -> None:
    async with SqliteBroker(SqliteSettings(path=db)) as broker:
        for start in range(0, count, 100):
            batch = [
                Message(data=f"payload {i}".encode(), id=f"{prefix}-{i}")
                for i in range(start, min(start + 100, count))
            ]
            await broker.publish(topic, batch)
        if hold:
            await _until_terminated()


async def serve(db: Path, topic: str) -> None:
    async def upper(message: Message) -> bytes:
        return message.data.upper()

    async with SqliteBroker(SqliteSettings(path=db)) as broker:
        await broker.serve(topic, upper, SubscriptionOptions(group="peer", concurrency=20))
        await _until_terminated()


def main() -> None:
    """Parse the command line and run one mode."""
    parser = argparse.ArgumentParser(prog="python -m tests.sqlite_peer")
    modes = parser.add_subparsers(dest="mode", required=True)
    c = modes.add_parser("consume")
    for name in ("db", "topic", "group", "out"):
        c.add_argument(name)
    c.add_argument("--lease", type=float, default=2.0)
    c.add_argument("--delay", type=float, default=0.0)
    p = modes.add_parser("publish")
    p.add_argument("db")
    p.add_argument("topic")
    p.add_argument("count", type=int)
    p.add_argument("--prefix", default="p")
    p.add_argument("--hold", action="store_true")
    s = modes.add_parser("serve")
    s.add_argument("db")
    s.add_argument("topic")
    args = parser.parse_args()
    if args.mode == "consume":
        out = Path(args.out)
        asyncio.run(consume(Path(args.db), args.topic, args.group, out, args.lease, args.delay))
    elif args.mode == "publish":
        asyncio.run(publish(Path(args.db), args.topic, args.count, args.prefix, args.hold))
    else:
        asyncio.run(serve(Path(args.db), args.topic))


if __name__ == "__main__":
    main()
