"""Scenario 4, bus only: consume + ack throughput of our broker in one process, no HTTP.

The topic's group is created first (a subscription opened and stopped), then the topic is filled
with ``messages`` payloads in published batches of 100, then a subscription drains it through the
delivery engine (handler returns SUCCESS).  The clock runs from opening that subscription until
the handler has seen every message and the subscription has stopped (which flushes the last acks).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from benchmarks.payload import PayloadFactory
from bus.broker import BaseBroker, Subscription
from bus.message import Message, Outcome
from bus.options import SubscriptionOptions

PUBLISH_BATCH = 100
STOP_TIMEOUT = 15.0  # stopping flushes the last acks; a stop that hangs fails the phase


@dataclass(frozen=True, slots=True)
class Drain:
    """One consume+ack run: messages handled, wall seconds, CPU seconds of this process."""

    messages: int
    elapsed: float
    cpu_seconds: float
    duplicates: int = 0

    @property
    def rate(self) -> float:
        """Messages per second."""
        return self.messages / max(self.elapsed, 1e-9)

    @property
    def cores(self) -> float:
        """Cores this process used on average."""
        return self.cpu_seconds / max(self.elapsed, 1e-9)


def payloads(size: int, count: int) -> list[bytes]:
    """``count`` distinct payloads of about ``size`` bytes."""
    factory = PayloadFactory(size)
    now = time.monotonic_ns()
    return [factory.message(i, now) for i in range(count)]


async def fill(broker: BaseBroker, topic: str, bodies: list[bytes]) -> Drain:
    """Publish ``bodies`` to ``topic`` in awaited batches of 100; the publish rate is a bonus."""
    started, cpu = time.perf_counter(), time.process_time()
    for first in range(0, len(bodies), PUBLISH_BATCH):
        batch = [Message(data=body) for body in bodies[first : first + PUBLISH_BATCH]]
        await broker.publish(topic, batch)
    return Drain(len(bodies), time.perf_counter() - started, time.process_time() - cpu)


async def consume(
    broker: BaseBroker, topic: str, options: SubscriptionOptions, expected: int, timeout: float
) -> Drain:
    """Drain ``expected`` messages from ``topic`` as ``options.group``; TimeoutError if stuck."""
    seen: set[str] = set()
    handled = 0
    done = asyncio.Event()

    async def handler(message: Message) -> Outcome:
        nonlocal handled
        handled += 1
        seen.add(message.id)
        if len(seen) >= expected:
            done.set()
        return Outcome.SUCCESS

    started, cpu = time.perf_counter(), time.process_time()
    subscription = await broker.subscribe(topic, handler, options)
    try:
        await asyncio.wait_for(done.wait(), timeout)
    finally:
        await stop_within(subscription, STOP_TIMEOUT)
    elapsed = time.perf_counter() - started
    return Drain(len(seen), elapsed, time.process_time() - cpu, handled - len(seen))


async def stop_within(subscription: Subscription, timeout: float) -> None:
    """Stop ``subscription``; TimeoutError naming the topic if that takes over ``timeout``."""
    # Not wait_for: a stop that swallows its cancellation would make wait_for wait forever.
    stopping = asyncio.ensure_future(subscription.stop())
    done, _ = await asyncio.wait({stopping}, timeout=timeout)
    if not done:
        raise TimeoutError(
            f"stopping the subscription to {subscription.topic} took over {timeout:g}s"
        )
    stopping.result()


async def create_group(broker: BaseBroker, topic: str, options: SubscriptionOptions) -> None:
    """Make the group exist before the fill, so the broker keeps every message for it."""

    async def ignore(message: Message) -> Outcome:  # nothing is published yet
        return Outcome.RETRY

    subscription = await broker.subscribe(topic, ignore, options)
    await stop_within(subscription, STOP_TIMEOUT)


async def measure_bus(
    broker: BaseBroker,
    topic: str,
    options: SubscriptionOptions,
    bodies: list[bytes],
    timeout: float,
) -> tuple[Drain, Drain]:
    """(fill, drain) of ``bodies`` through ``broker``, which must be connected."""
    await create_group(broker, topic, options)
    filled = await fill(broker, topic, bodies)
    drained = await consume(broker, topic, options, len(bodies), timeout)
    return filled, drained
