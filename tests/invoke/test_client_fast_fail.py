"""A pending remote call fails fast once its callee has no live instance any more.

The callee's server takes the call and never answers; its presence is then withdrawn or left to
expire (what a SIGKILLed sidecar leaves behind), and the caller's one watcher per topic fails the
call with NoInstance within about one poll interval instead of at its time-out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace

import pytest

from bus.broker import BaseBroker
from bus.envelope import Headers
from bus.errors import BrokerUnavailable
from bus.memory import MemoryBroker, MemoryHub
from bus.options import RetryPolicy
from bus.presence import HEARTBEAT_TTL, KIND_KEY, SERVICE, Presence
from invoke import Call, Reply, call_topic
from invoke.client import InvokePolicy, Invoker, RetryRule
from invoke.errors import InvokeTimeout, NoInstance
from tests.conftest import MakeBroker
from tests.helpers import eventually

POLL = 0.1  # the watcher's interval in these tests (a sidecar polls every heartbeat, 2 s)
GONE = "no running instance of app orders: its last instance went away"


@dataclass
class HangingApp:
    """Takes each call and answers only once released (a callee stuck in its handler)."""

    taken: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, call: Call, timeout: float) -> Reply:
        self.taken += 1
        await self.release.wait()
        return Reply(200, Headers(), call.body)


class CountingBroker(MemoryBroker):
    """A memory broker that counts presence lookups (the watcher's only traffic) and can fail
    them, as a bus that went down does."""

    lookups = 0
    down = False
    after_lookup: Callable[[], object] | None = None

    async def instances(self, name: str | None = None, kind: str | None = None) -> list[Presence]:
        self.lookups += 1
        if self.down:
            raise BrokerUnavailable("the bus is down")
        found = await super().instances(name, kind)
        if self.after_lookup is not None:
            self.after_lookup()
        return found


class FreezingBroker(MemoryBroker):
    """A memory broker whose heartbeats stop once frozen, as a SIGKILLed sidecar's do."""

    frozen = False

    async def _beat(self, entries: Sequence[Presence]) -> None:
        if not self.frozen:
            await super()._beat(entries)


@dataclass
class RecordingBreaker:
    """A breaker that never opens and records each attempt's outcome."""

    outcomes: list[bool] = field(default_factory=list)

    def allow(self) -> bool:
        return True

    def record(self, success: bool) -> None:
        self.outcomes.append(success)


def _call(app_id: str = "orders") -> Call:
    return Call(app_id, "m", "POST", "", Headers(), b"hi", "checkout")


async def _serve(broker: BaseBroker, app_id: str, app: HangingApp) -> Invoker:
    callee = Invoker(broker, app_id)
    await callee.serve(app)
    return callee


async def _withdraw(broker: BaseBroker, app_id: str) -> None:
    """The server's presence entry goes, its subscription stays: the caller sees a dead callee."""
    entry = Presence(call_topic(app_id), broker.instance, metadata={KIND_KEY: SERVICE})
    await broker.withdraw(entry)


def _expire(hub: MemoryHub, broker: FreezingBroker) -> None:
    """What a heartbeat TTL without beats leaves of ``broker``'s entries."""
    broker.frozen = True
    for key, entry in list(hub.presence.items()):
        if entry.instance == broker.instance:
            hub.presence[key] = replace(entry, last_beat=time.time() - HEARTBEAT_TTL - 1)


def _watchers() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("invoke-watch:")]


@pytest.fixture
def hub() -> MemoryHub:
    return MemoryHub()


@pytest.fixture
async def caller_broker(hub: MemoryHub) -> AsyncIterator[CountingBroker]:
    broker = CountingBroker(hub)
    await broker.connect()
    yield broker
    await broker.close()


@pytest.fixture
async def callee_broker(hub: MemoryHub) -> AsyncIterator[FreezingBroker]:
    broker = FreezingBroker(hub, drain_timeout=0.2)
    await broker.connect()
    yield broker
    await broker.close()


@dataclass
class Held:
    """A callee ``orders`` whose app holds every call, and an invoker of ``checkout``."""

    app: HangingApp
    invoker: Invoker


@pytest.fixture
async def held(caller_broker: CountingBroker, callee_broker: FreezingBroker) -> AsyncIterator[Held]:
    app = HangingApp()
    callee = await _serve(callee_broker, "orders", app)
    invoker = Invoker(caller_broker, "checkout", presence_interval=POLL)
    try:
        yield Held(app, invoker)
    finally:
        app.release.set()
        await invoker.close()
        await callee.close()


async def test_a_taken_call_fails_at_once_when_its_server_withdraws(
    make_broker: MakeBroker,
) -> None:
    # Given a callee (on any backend) that has taken a call with a 30 s time-out
    app = HangingApp()
    callee = await _serve(await make_broker(drain_timeout=0.2), "orders", app)
    assert callee.broker is not None
    invoker = Invoker(await make_broker(), "checkout", presence_interval=POLL)
    pending = asyncio.create_task(invoker.invoke(_call(), timeout=30))
    try:
        await eventually(lambda: app.taken == 1)
        # When its presence entry goes while it still holds the call
        started = time.monotonic()
        await _withdraw(callee.broker, "orders")
        # Then the caller fails with NoInstance within a few polls, not at its time-out
        with pytest.raises(NoInstance, match=GONE):
            await asyncio.wait_for(pending, timeout=5)
        assert time.monotonic() - started < 5
    finally:
        app.release.set()
        pending.cancel()
        await invoker.close()
        await callee.close()


async def test_an_expired_entry_fails_the_call(
    hub: MemoryHub, callee_broker: FreezingBroker, held: Held
) -> None:
    # Given a call taken by a callee whose sidecar then stops beating, its entry expired
    pending = asyncio.create_task(held.invoker.invoke(_call(), timeout=30))
    await eventually(lambda: held.app.taken == 1)
    _expire(hub, callee_broker)
    # Then the call fails with NoInstance, which the HTTP layer answers 500 ERR_DIRECT_INVOKE
    with pytest.raises(NoInstance, match=GONE):
        await asyncio.wait_for(pending, timeout=5)


async def test_calls_to_a_live_topic_are_not_failed(
    caller_broker: CountingBroker, callee_broker: FreezingBroker, hub: MemoryHub
) -> None:
    # Given calls pending to two apps from one invoker, each held by its callee
    orders, stock = HangingApp(), HangingApp()
    stock_broker = MemoryBroker(hub)
    await stock_broker.connect()
    callees = [
        await _serve(callee_broker, "orders", orders),
        await _serve(stock_broker, "stock", stock),
    ]
    invoker = Invoker(caller_broker, "checkout", presence_interval=POLL)
    to_orders = [asyncio.create_task(invoker.invoke(_call(), timeout=30)) for _ in range(3)]
    to_stock = [asyncio.create_task(invoker.invoke(_call("stock"), timeout=30)) for _ in range(3)]
    await eventually(lambda: orders.taken == 3 and stock.taken == 3)
    # When the last instance of orders goes away
    await _withdraw(callee_broker, "orders")
    # Then every call to orders fails, and the calls to stock are still waiting
    for task in to_orders:
        with pytest.raises(NoInstance, match=GONE):
            await asyncio.wait_for(task, timeout=5)
    await asyncio.sleep(5 * POLL)
    assert not any(task.done() for task in to_stock)
    # and get their replies once stock answers
    stock.release.set()
    replies = await asyncio.wait_for(asyncio.gather(*to_stock), timeout=5)
    assert [r.status for r in replies] == [200, 200, 200]
    orders.release.set()
    await invoker.close()
    for callee in callees:
        await callee.close()
    await stock_broker.close()


async def test_one_watcher_per_topic_and_none_once_nothing_is_pending(
    caller_broker: CountingBroker, callee_broker: FreezingBroker, held: Held
) -> None:
    # Given calls answered within one poll interval: they cost no lookup
    app, invoker = held.app, held.invoker
    app.release.set()
    for _ in range(10):
        assert (await invoker.invoke(_call())).status == 200
    assert caller_broker.lookups == 0
    # Given twenty calls to one app pending for several poll intervals
    app.release.clear()
    app.taken = 0
    calls = [asyncio.create_task(invoker.invoke(_call(), timeout=30)) for _ in range(20)]
    await eventually(lambda: app.taken == 20)
    await asyncio.sleep(5.5 * POLL)
    # Then one watcher looked presence up once per interval, not once per call
    assert len(_watchers()) == 1
    assert 3 <= caller_broker.lookups <= 8
    # When the calls are answered, the watcher ends and looks up nothing more
    app.release.set()
    await asyncio.gather(*calls)
    await eventually(lambda: not _watchers(), timeout=2)
    seen = caller_broker.lookups
    await asyncio.sleep(5 * POLL)
    assert caller_broker.lookups == seen


async def test_close_cancels_the_watcher_and_calls_keep_their_time_out(
    caller_broker: CountingBroker, callee_broker: FreezingBroker, held: Held
) -> None:
    # Given a pending call and its watcher
    app, invoker = held.app, held.invoker
    pending = asyncio.create_task(invoker.invoke(_call(), timeout=1.0))
    await eventually(lambda: app.taken == 1)
    assert len(_watchers()) == 1
    # When the invoker closes, and then the callee goes away
    await invoker.close()
    assert not _watchers()
    await _withdraw(callee_broker, "orders")
    # Then nothing watches any more: the call ends at its own time-out
    seen = caller_broker.lookups
    with pytest.raises(InvokeTimeout):
        await asyncio.wait_for(pending, timeout=5)
    assert caller_broker.lookups == seen


async def test_a_watcher_that_cannot_look_up_fails_nothing(
    caller_broker: CountingBroker,
    callee_broker: FreezingBroker,
    caplog: pytest.LogCaptureFixture,
    held: Held,
) -> None:
    # Given a pending call whose callee went away while the bus cannot be asked
    app, invoker = held.app, held.invoker
    pending = asyncio.create_task(invoker.invoke(_call(), timeout=30))
    await eventually(lambda: app.taken == 1)
    caller_broker.down = True
    with caplog.at_level(logging.WARNING, logger="omnibus.invoke"):
        await _withdraw(callee_broker, "orders")
        await eventually(lambda: caller_broker.lookups >= 4)
    # Then the call still waits (for its own time-out), and the failure is logged once
    assert not pending.done()
    warnings = [r for r in caplog.records if "cannot watch the servers" in r.getMessage()]
    assert len(warnings) == 1
    # When lookups work again, the call fails fast after all
    caller_broker.down = False
    with pytest.raises(NoInstance, match=GONE):
        await asyncio.wait_for(pending, timeout=5)


@pytest.mark.parametrize(("codes", "attempts"), [(frozenset({14}), 3), (frozenset({4}), 1)])
async def test_resiliency_retries_it_as_unavailable(
    callee_broker: FreezingBroker, held: Held, codes: frozenset[int], attempts: int
) -> None:
    # A call failed because its callee went away is gRPC 14 (Unavailable), as NoInstance is.
    breaker = RecordingBreaker()
    retry = RetryRule(
        RetryPolicy(max_attempts=3, initial_interval=0.01, max_interval=0.01, jitter=0.0),
        grpc_codes=codes,
    )
    policy = InvokePolicy(retry=retry, breaker=breaker)
    held.invoker.policies = lambda _: policy
    pending = asyncio.create_task(held.invoker.invoke(_call(), timeout=30))
    await eventually(lambda: held.app.taken == 1)
    await _withdraw(callee_broker, "orders")
    with pytest.raises(NoInstance):
        await asyncio.wait_for(pending, timeout=10)
    assert breaker.outcomes == [False] * attempts


async def test_a_caller_cancelled_meanwhile_is_cancelled_and_the_others_fail(
    caller_broker: CountingBroker, callee_broker: FreezingBroker, held: Held
) -> None:
    # Given two calls pending to one app whose last instance goes away
    app, invoker = held.app, held.invoker
    first = asyncio.create_task(invoker.invoke(_call(), timeout=30))
    second = asyncio.create_task(invoker.invoke(_call(), timeout=30))
    await eventually(lambda: app.taken == 2)
    # When the first caller is cancelled in the very step the watcher fails both calls
    caller_broker.after_lookup = first.cancel
    await _withdraw(callee_broker, "orders")
    # Then the first sees its own cancellation, and only the second is failed
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(first, timeout=5)
    with pytest.raises(NoInstance, match=GONE):
        await asyncio.wait_for(second, timeout=5)
