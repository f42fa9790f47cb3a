"""The app's subscriptions as one intake the sidecar can hold, so nothing is pulled in vain.

Two things hold the intake, each for its own reason:

- the app's health checks (``--enable-app-health-check``): while the app is unhealthy, every
  subscription is stopped and its messages stay in the broker; the first healthy probe opens
  them again;
- a pubsub component's inbound circuit breaker (``kind: Resiliency``): while it is open, the
  component's subscriptions are stopped; after its ``timeout`` they open again, half-open, and
  the breaker lets ``maxRequests`` deliveries through to decide whether to close or open again.

Holding a subscription stops it as a shutdown would (handlers finish within the broker's drain
bound, the rest are handed back unacked, nothing counts as an attempt); releasing subscribes
again with the same handler and options.  A delivery whose breaker does not let it through
waits: it goes on if the breaker closes, and is handed back if its subscription stops.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from bus.broker import Subscription
from bus.delivery import Handler
from bus.errors import ConfigError, InvalidArgument, OmnibusError
from bus.message import Message, Outcome
from bus.options import SubscriptionOptions
from components.resiliency import BreakerState, CircuitBreaker, inbound_breaker
from components.specs import ResiliencySpec, SubscriptionSpec
from runtime.api.dapr_errors import ApiError
from runtime.channel import AppChannel
from runtime.pubsub.components import PubSubComponent, PubSubs
from runtime.pubsub.subscribing import make_handler, subscription_options

log = logging.getLogger("omnibus.runtime")

APP_UNHEALTHY = "the app is unhealthy"
BREAKER_OPEN = "its inbound circuit breaker is open"
_RESUBSCRIBE_DELAY = 1.0  # seconds before a failed re-subscribe is tried again


@dataclass(slots=True)
class _Entry:
    spec: SubscriptionSpec
    component: PubSubComponent
    handler: Handler
    options: SubscriptionOptions
    subscription: Subscription | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Intake:
    """The running subscriptions of one app; :meth:`hold` and :meth:`release` pause them."""

    def __init__(
        self,
        pubsubs: PubSubs,
        channel: AppChannel,
        app_id: str,
        resiliencies: Sequence[ResiliencySpec] = (),
    ) -> None:
        self._pubsubs = pubsubs
        self._channel = channel
        self._app_id = app_id
        self._resiliencies = tuple(resiliencies)
        self._entries: list[_Entry] = []
        self._holds: dict[str | None, set[str]] = {}  # pubsub (None: all) -> reasons
        self._gates: dict[str, BreakerGate] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def subscriptions(self) -> list[Subscription]:
        """The subscriptions pulling messages now."""
        return [e.subscription for e in self._entries if e.subscription is not None]

    def breaker(self, pubsub: str) -> CircuitBreaker | None:
        """The inbound circuit breaker of ``pubsub``, if a Resiliency gives it one."""
        gate = self._gates.get(pubsub)
        return gate.breaker if gate is not None else None

    def held(self, pubsub: str) -> bool:
        """Whether the subscriptions of ``pubsub`` are held now."""
        return bool(self._holds.get(None) or self._holds.get(pubsub))

    async def open(self, specs: Sequence[SubscriptionSpec]) -> None:
        """Subscribe every spec (now, or once no hold applies); bad ones are logged, skipped."""
        for spec in specs:
            try:
                entry = self._entry(spec)
            except (ApiError, ConfigError, InvalidArgument) as exc:
                message = exc.message if isinstance(exc, ApiError) else str(exc)
                where = f"{spec.pubsubname or '-'}/{spec.topic}"
                log.error("not subscribing to %s: %s", where, message)
                continue
            self._entries.append(entry)
        await self._sync()

    async def hold(self, reason: str, pubsub: str | None = None) -> None:
        """Stop pulling for ``reason``: every subscription, or those of ``pubsub``."""
        self._holds.setdefault(pubsub, set()).add(reason)
        await self._sync()

    async def release(self, reason: str, pubsub: str | None = None) -> None:
        """End the hold for ``reason``; subscriptions no other hold applies to pull again."""
        self._holds.get(pubsub, set()).discard(reason)
        await self._sync()

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in the background (from a handler, which must not wait for its own stop)."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Stop every subscription (each drains within its broker's bound)."""
        self._closed = True
        for gate in self._gates.values():
            gate.close()
        await self._sync()
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _entry(self, spec: SubscriptionSpec) -> _Entry:
        component = self._pubsubs.get(spec.pubsubname)
        if not self._pubsubs.scopes(spec.pubsubname).can_subscribe(spec.topic):
            raise ConfigError("the pubsub's subscriptionScopes do not allow it")
        handler = make_handler(spec, self._channel)
        gate = self._gate(component.name)
        if gate is not None:
            handler = BreakerHandler(handler, gate)
        options = subscription_options(spec, component, self._app_id)
        return _Entry(spec, component, handler, options)

    def _gate(self, pubsub: str) -> BreakerGate | None:
        if pubsub not in self._gates:
            spec = inbound_breaker(self._resiliencies, pubsub)
            if spec is None:
                return None
            breaker = CircuitBreaker(spec, name=f"inbound circuit breaker of {pubsub}")
            self._gates[pubsub] = BreakerGate(breaker, pubsub, self)
        return self._gates[pubsub]

    async def _sync(self) -> None:
        await asyncio.gather(*(self._sync_one(entry) for entry in self._entries))

    async def _sync_one(self, entry: _Entry) -> None:
        async with entry.lock:
            wanted = not self._closed and not self.held(entry.spec.pubsubname)
            spec = entry.spec
            if wanted and entry.subscription is None:
                try:
                    entry.subscription = await entry.component.broker.subscribe(
                        spec.topic, entry.handler, entry.options
                    )
                except OmnibusError as exc:  # the broker is down: try again shortly
                    log.error("subscribing to %s/%s failed: %s", spec.pubsubname, spec.topic, exc)
                    self.spawn(self._sync_later())
                    return
                log.info(
                    "subscribed to %s/%s (%s, group %s)",
                    spec.pubsubname,
                    spec.topic,
                    spec.type.lower(),
                    entry.options.group,
                )
            elif not wanted and entry.subscription is not None:
                subscription, entry.subscription = entry.subscription, None
                if not self._closed:
                    log.warning(
                        "not pulling %s/%s: %s", spec.pubsubname, spec.topic, self._why(spec)
                    )
                try:
                    await subscription.stop()
                except Exception as exc:
                    log.error("stopping the subscription to %s failed: %r", spec.topic, exc)

    def _why(self, spec: SubscriptionSpec) -> str:
        reasons = self._holds.get(None, set()) | self._holds.get(spec.pubsubname, set())
        return ", ".join(sorted(reasons))

    async def _sync_later(self) -> None:
        await asyncio.sleep(_RESUBSCRIBE_DELAY)
        if not self._closed:
            await self._sync()


class BreakerGate:
    """A component's inbound breaker, tied to the intake: open holds it, half-open releases it."""

    def __init__(self, breaker: CircuitBreaker, pubsub: str, intake: Intake) -> None:
        self.breaker = breaker
        self._pubsub = pubsub
        self._intake = intake
        self._changed: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    async def changed(self) -> None:
        """Wait until the breaker's state may have changed."""
        if self._changed is None or self._changed.done():
            self._changed = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._changed)

    def record(self, success: bool, generation: int) -> None:
        """Count one delivery's result; hold the intake when that opens the breaker."""
        before = self.breaker.generation
        self.breaker.record(success, generation)
        if self.breaker.generation != before:
            self._wake()
        self.check()

    def check(self) -> None:
        """Hold the component's intake while the breaker is open (once per opening)."""
        if self._closed:
            return
        if self.breaker.state is BreakerState.OPEN and self._timer is None:
            self._intake.spawn(self._intake.hold(BREAKER_OPEN, self._pubsub))
            delay = self.breaker.retry_after()
            self._timer = asyncio.get_running_loop().call_later(delay, self._half_open)

    def close(self) -> None:
        """Cancel the half-open timer (the sidecar is stopping)."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._wake()

    def _half_open(self) -> None:
        self._timer = None
        self._wake()
        self._intake.spawn(self._intake.release(BREAKER_OPEN, self._pubsub))

    def _wake(self) -> None:
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)


class BreakerHandler:
    """Delivers through a circuit breaker: a RETRY, an error or a time-out is a failure."""

    def __init__(self, inner: Handler, gate: BreakerGate) -> None:
        self._inner = inner
        self._gate = gate

    async def __call__(self, message: Message) -> Outcome:
        breaker = self._gate.breaker
        while not breaker.allow():
            self._gate.check()
            await self._gate.changed()  # closed: go on; open again: the stop hands it back
        generation = breaker.generation
        try:
            outcome = await self._inner(message)
        except BaseException:
            self._gate.record(False, generation)
            raise
        self._gate.record(outcome is not Outcome.RETRY, generation)
        return outcome
