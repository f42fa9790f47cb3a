"""The delivery engine's policy, observed through a recording Source."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from bus.broker import Subscription
from bus.delivery import Dispatcher
from bus.message import Message, Outcome
from bus.options import RetryPolicy, SubscriptionOptions


@dataclass
class _Delivery:
    message: Message


@dataclass
class RecordingSource:
    """A Source that hands out a fixed list once and records how it was settled."""

    pending: list[_Delivery]
    ack_calls: list[list[str]] = field(default_factory=list)
    retries: list[tuple[str, float]] = field(default_factory=list)
    dead: list[tuple[str, str]] = field(default_factory=list)
    released: list[str] = field(default_factory=list)
    closed: bool = False

    async def fetch(self, limit: int) -> Sequence[_Delivery]:
        if not self.pending:
            await asyncio.Event().wait()
        out, self.pending = self.pending[:limit], self.pending[limit:]
        return out

    async def ack(self, deliveries: Sequence[_Delivery]) -> None:
        await asyncio.sleep(0.01)  # a broker round trip, during which more acks queue up
        self.ack_calls.append([d.message.id for d in deliveries])

    async def retry(self, delivery: _Delivery, delay: float) -> None:
        self.retries.append((delivery.message.id, delay))

    async def dead_letter(self, delivery: _Delivery, topic: str) -> None:
        self.dead.append((delivery.message.id, topic))

    async def release(self, deliveries: Sequence[_Delivery]) -> None:
        self.released.extend(d.message.id for d in deliveries)

    async def close(self) -> None:
        self.closed = True


def deliveries(n: int, attempt: int = 1) -> list[_Delivery]:
    return [_Delivery(Message(data=b"x", id=f"m{i}", attempt=attempt)) for i in range(n)]


async def run_until(dispatcher: Dispatcher[_Delivery], done: asyncio.Event) -> None:
    task = asyncio.create_task(dispatcher.run())
    await asyncio.wait_for(done.wait(), 5)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await dispatcher.stop(drain_timeout=1)


async def test_acks_of_concurrent_completions_are_coalesced() -> None:
    source = RecordingSource(deliveries(200))
    done = asyncio.Event()
    count = 0

    async def handler(message: Message) -> Outcome:
        nonlocal count
        count += 1
        if count == 200:
            done.set()
        return Outcome.SUCCESS

    options = SubscriptionOptions(group="g", concurrency=100)
    dispatcher = Dispatcher("t", source, handler, options)
    await run_until(dispatcher, done)
    acked = [i for call in source.ack_calls for i in call]
    assert sorted(acked) == sorted(f"m{i}" for i in range(200))
    assert len(source.ack_calls) < 20, "acks were not coalesced"


async def test_retry_until_exhausted_then_dead_letter() -> None:
    policy = RetryPolicy(max_attempts=3, initial_interval=1.0, jitter=0.0)
    early = deliveries(1, attempt=2)
    last = [_Delivery(Message(data=b"x", id="last", attempt=3))]
    source = RecordingSource(early + last)
    done = asyncio.Event()
    seen = 0

    async def handler(message: Message) -> Outcome:
        nonlocal seen
        seen += 1
        if seen == 2:
            asyncio.get_running_loop().call_later(0.05, done.set)
        return Outcome.RETRY

    options = SubscriptionOptions(group="g", retry=policy, dead_letter_topic="poison")
    await run_until(Dispatcher("t", source, handler, options), done)
    assert source.retries == [("m0", 2.0)]
    assert source.dead == [("last", "poison")]
    assert source.ack_calls == []


async def test_drop_goes_to_the_default_dead_letter_topic() -> None:
    source = RecordingSource(deliveries(1))
    done = asyncio.Event()

    async def handler(message: Message) -> Outcome:
        asyncio.get_running_loop().call_later(0.05, done.set)
        return Outcome.DROP

    await run_until(Dispatcher("orders", source, handler, SubscriptionOptions(group="g")), done)
    assert source.dead == [("m0", "orders.deadletter")]


async def test_stop_hands_back_what_did_not_finish_and_acks_nothing_of_it() -> None:
    source = RecordingSource(deliveries(3))
    started = asyncio.Event()

    async def handler(message: Message) -> Outcome:
        started.set()
        await asyncio.sleep(30)
        return Outcome.SUCCESS

    dispatcher = Dispatcher("t", source, handler, SubscriptionOptions(group="g"))
    task = asyncio.create_task(dispatcher.run())
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await dispatcher.stop(drain_timeout=0.1)
    assert sorted(source.released) == ["m0", "m1", "m2"]
    assert source.ack_calls == []


@pytest.mark.parametrize("swallows", [False, True], ids=["propagates", "swallows"])
async def test_a_handler_past_its_processing_timeout_is_stopped_and_retried(
    swallows: bool,
) -> None:
    source = RecordingSource(deliveries(2))
    done = asyncio.Event()
    stopped: list[str] = []

    async def handler(message: Message) -> Outcome:
        if message.id == "m1":
            return Outcome.SUCCESS
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            stopped.append(message.id)
            asyncio.get_running_loop().call_later(0.05, done.set)
            if not swallows:
                raise
        return Outcome.SUCCESS  # what a handler that swallowed the cancellation says

    options = SubscriptionOptions(group="g", processing_timeout=0.2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await run_until(Dispatcher("t", source, handler, options), done)
    assert 0.2 <= loop.time() - started < 1.0  # within the timeout plus a tenth, and the linger
    assert stopped == ["m0"]
    assert [i for i, _ in source.retries] == ["m0"]
    assert [i for call in source.ack_calls for i in call] == ["m1"]
    assert source.released == []


async def test_handler_returning_garbage_counts_as_retry() -> None:
    source = RecordingSource(deliveries(1))
    done = asyncio.Event()

    async def handler(message: Message) -> Outcome:
        asyncio.get_running_loop().call_later(0.05, done.set)
        return "SUCCESS"  # type: ignore[return-value]

    await run_until(Dispatcher("t", source, handler, SubscriptionOptions(group="g")), done)
    assert [i for i, _ in source.retries] == ["m0"]


class SlowToCancelSource(RecordingSource):
    """A fetch that takes a while to give up when cancelled, like a client mid-command."""

    async def fetch(self, limit: int) -> Sequence[_Delivery]:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await asyncio.sleep(1.0)
        return []


async def test_stop_lets_a_bounded_caller_time_out() -> None:
    """A caller bounding Subscription.stop() with a time-out sees it fire."""
    source = SlowToCancelSource(pending=[])

    async def handler(message: Message) -> Outcome:
        return Outcome.SUCCESS

    subscription = Subscription(
        "slow", SubscriptionOptions(group="g"), source, handler, 5.0, lambda _: None
    )
    await asyncio.sleep(0.01)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await subscription.stop()
    assert loop.time() - started < 0.5
