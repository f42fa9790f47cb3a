"""Holding the app's intake: circuit breakers of ``kind: Resiliency`` and app health checks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import MappingProxyType

import pytest
from aiohttp import web

from bus.memory import MemoryBroker, MemoryHub
from components.resiliency import BreakerState
from components.specs import CircuitBreakerSpec, ResiliencySpec, Routes, SubscriptionSpec
from runtime.channel import AppChannel, AppHealth
from runtime.config import HealthCheck
from runtime.pubsub.components import PubSubs
from runtime.pubsub.intake import APP_UNHEALTHY, Intake
from runtime.pubsub.publisher import PublishContext, make_message
from tests.helpers import eventually
from tests.runtime_asgi import Component, Defaults

OPEN_FOR = 0.5


@dataclass
class App:
    failures: int = 0  # the first this many deliveries answer 500
    healthy: bool = True
    deliveries: list[float] = field(default_factory=list)  # when each delivery arrived
    delivered: list[bytes] = field(default_factory=list)
    probes: int = 0

    async def event(self, request: web.Request) -> web.Response:
        self.deliveries.append(time.monotonic())
        if len(self.deliveries) <= self.failures:
            return web.Response(status=500)
        self.delivered.append(await request.read())
        return web.Response(status=200)

    async def health(self, request: web.Request) -> web.Response:
        self.probes += 1
        return web.Response(status=200 if self.healthy else 503)


@dataclass
class World:
    app: App
    port: int
    channel: AppChannel
    pubsubs: PubSubs
    broker: MemoryBroker

    async def publish(self, count: int) -> None:
        ctx = PublishContext("pubsub", "orders", "publisher")
        for i in range(count):
            message = make_message(b'{"n": %d}' % i, "application/json", {}, ctx)
            await self.pubsubs.publisher("pubsub").publish("orders", [message])


@pytest.fixture
async def world() -> AsyncIterator[World]:
    app = App()
    server = web.Application()
    server.router.add_post("/events", app.event)
    server.router.add_get("/healthz", app.health)
    runner = web.AppRunner(server, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    broker = MemoryBroker(MemoryHub())
    pubsubs = PubSubs([Component("pubsub", broker, defaults=Defaults(concurrency=1))])
    await pubsubs.connect()
    async with AppChannel("127.0.0.1", port) as channel:
        yield World(app, port, channel, pubsubs, broker)
        await pubsubs.close()
    await runner.cleanup()


SPEC = SubscriptionSpec(pubsubname="pubsub", topic="orders", routes=Routes(default="/events"))
RESILIENCY = ResiliencySpec(
    name="r",
    circuit_breakers=MappingProxyType(
        {"cb": CircuitBreakerSpec(timeout=OPEN_FOR, trip="consecutiveFailures >= 2")}
    ),
    components=MappingProxyType({"pubsub": {"inbound": {"circuitBreaker": "cb"}}}),
)


async def test_an_open_breaker_stops_pulling_until_half_open(world: World) -> None:
    world.app.failures = 2
    intake = Intake(world.pubsubs, world.channel, "orders-app", [RESILIENCY])
    await intake.open([SPEC])
    breaker = intake.breaker("pubsub")
    assert breaker is not None
    await world.publish(4)
    await eventually(lambda: len(world.app.delivered) == 4, timeout=10)
    first_failure, second_failure, probe = world.app.deliveries[:3]
    # Then: nothing reached the app while the breaker was open; the half-open probe succeeded
    assert probe - second_failure >= OPEN_FOR * 0.9
    assert breaker.state is BreakerState.CLOSED
    assert not intake.held("pubsub") and len(intake.subscriptions) == 1
    assert await world.broker.browse("orders.deadletter") == []
    await intake.close()
    assert intake.subscriptions == []


async def test_a_failing_probe_opens_the_breaker_again(world: World) -> None:
    world.app.failures = 3
    intake = Intake(world.pubsubs, world.channel, "orders-app", [RESILIENCY])
    await intake.open([SPEC])
    await world.publish(2)
    await eventually(lambda: len(world.app.delivered) == 2, timeout=10)
    times = world.app.deliveries
    assert times[2] - times[1] >= OPEN_FOR * 0.9  # open, then a failed half-open probe
    assert times[3] - times[2] >= OPEN_FOR * 0.9  # open again, then the probe that closes it
    await intake.close()


async def test_an_unhealthy_app_gets_no_messages_until_healthy(world: World) -> None:
    world.app.healthy = False
    intake = Intake(world.pubsubs, world.channel, "orders-app")
    await intake.hold(APP_UNHEALTHY)
    await intake.open([SPEC])

    async def follow(healthy: bool) -> None:
        await (intake.release if healthy else intake.hold)(APP_UNHEALTHY)

    check = HealthCheck(interval=0.02, timeout=1.0, threshold=2)
    health = AppHealth("127.0.0.1", world.port, check, follow)
    probing = asyncio.create_task(health.run())
    await world.publish(3)
    probes = world.app.probes
    await eventually(lambda: world.app.probes >= probes + 3)
    assert world.app.deliveries == [] and intake.subscriptions == []
    assert await world.broker.browse("orders") != []  # they wait in the broker
    world.app.healthy = True
    await eventually(lambda: len(world.app.delivered) == 3)
    assert health.healthy is True
    # When the app turns unhealthy again, intake stops after the threshold of failed probes
    world.app.healthy = False
    await eventually(lambda: intake.held("pubsub"))
    assert health.healthy is False
    await world.publish(1)
    probes = world.app.probes
    await eventually(lambda: world.app.probes >= probes + 3)
    assert len(world.app.delivered) == 3
    world.app.healthy = True
    await eventually(lambda: len(world.app.delivered) == 4)
    probing.cancel()
    await asyncio.wait([probing])
    await intake.close()
