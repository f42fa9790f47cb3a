"""In-process throughput of the memory and SQLite brokers, without HTTP.

    python -m benchmarks.bus_inprocess [--count N] [--size B] [--backend memory|sqlite]...

Two figures per backend, in messages per second:

- ingest: one publisher publishing ``count`` messages in batches of 100, each batch awaited
  (on SQLite: one fsynced commit per batch);
- end-to-end: the same publishes from 4 concurrent publishers, while one subscription (100
  handlers, fetches of up to 100) consumes and acks every message; the clock stops once the last
  ack is written.

:func:`measure` is what ``omnibus bench`` imports.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from bus.broker import BaseBroker
from bus.memory import MemoryBroker
from bus.message import Message, Outcome
from bus.options import SubscriptionOptions
from bus.sqlite import SqliteBroker, SqliteSettings

BACKENDS = ("memory", "sqlite")
BATCH = 100
PUBLISHERS = 4


@asynccontextmanager
async def _broker(backend: str) -> AsyncIterator[BaseBroker]:
    if backend == "memory":
        async with MemoryBroker() as memory:
            yield memory
        return
    if backend != "sqlite":
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    with tempfile.TemporaryDirectory(prefix="omnibus-bench-") as tmp:
        async with SqliteBroker(SqliteSettings(path=Path(tmp) / "bus.db")) as sqlite:
            yield sqlite


def _batches(count: int, size: int) -> list[list[Message]]:
    payload = os.urandom(size)
    messages = [Message(data=payload) for _ in range(count)]
    return [messages[i : i + BATCH] for i in range(0, count, BATCH)]


async def _ingest(broker: BaseBroker, count: int, size: int) -> float:
    batches = _batches(count, size)
    started = time.perf_counter()
    for batch in batches:
        await broker.publish("bench.ingest", batch)
    return count / (time.perf_counter() - started)


async def _end_to_end(broker: BaseBroker, count: int, size: int) -> float:
    batches = _batches(count, size)
    done = asyncio.Event()
    handled = 0

    async def handler(message: Message) -> Outcome:
        nonlocal handled
        handled += 1
        if handled >= count:
            done.set()
        return Outcome.SUCCESS

    options = SubscriptionOptions(group="bench", concurrency=100, batch_size=100)
    subscription = await broker.subscribe("bench.e2e", handler, options)

    async def publisher(share: list[list[Message]]) -> None:
        for batch in share:
            await broker.publish("bench.e2e", batch)

    started = time.perf_counter()
    await asyncio.gather(*(publisher(batches[i::PUBLISHERS]) for i in range(PUBLISHERS)))
    await done.wait()
    await subscription.stop()  # flushes the last acks
    return count / (time.perf_counter() - started)


async def measure_async(backend: str, count: int, size: int) -> dict[str, float | int | str]:
    """Ingest and end-to-end msgs/s of ``backend`` for ``count`` messages of ``size`` bytes."""
    async with _broker(backend) as broker:
        ingest = await _ingest(broker, count, size)
    async with _broker(backend) as broker:
        end_to_end = await _end_to_end(broker, count, size)
    return {
        "backend": backend,
        "count": count,
        "size": size,
        "ingest_msgs_per_s": round(ingest),
        "end_to_end_msgs_per_s": round(end_to_end),
    }


def measure(backend: str, count: int, size: int) -> dict[str, float | int | str]:
    """Run :func:`measure_async` in a fresh event loop."""
    return asyncio.run(measure_async(backend, count, size))


def main() -> None:
    """Print one table: backend, ingest and end-to-end msgs/s."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bus_inprocess")
    parser.add_argument("--count", type=int, default=20_000, help="messages per figure")
    parser.add_argument("--size", type=int, default=256, help="payload bytes")
    parser.add_argument("--backend", action="append", choices=BACKENDS, help="default: all")
    args = parser.parse_args()
    print(f"{args.count} messages of {args.size} B, batches of {BATCH}")
    print(f"{'backend':<10}{'ingest msgs/s':>16}{'end-to-end msgs/s':>20}")
    for backend in args.backend or BACKENDS:
        result = measure(backend, args.count, args.size)
        ingest, e2e = result["ingest_msgs_per_s"], result["end_to_end_msgs_per_s"]
        print(f"{backend:<10}{ingest:>16,}{e2e:>20,}")


if __name__ == "__main__":
    main()
