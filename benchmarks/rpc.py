"""Scenario ``rpc``, bus only: request/reply calls of our brokers against the raw clients.

Per backend, in one process and no HTTP, one echo server and one caller on *two* broker objects
(so the in-process shortcut of a broker calling a topic it serves itself is not taken):
``broker.serve`` in call mode (100 handlers) and ``broker.request`` with a 1 KB body (``--size``)
that the server sends back.  Each subject is warmed up with a few calls, then driven for a fixed
time with 1 call in flight (calls/s, and the p50/p99 of one call) and with 64 in flight (calls/s).

Subjects take their turns in rotation (:data:`SLICES` slices of each phase), so that load from
neighbours on the shared cores falls on every subject alike.  Baselines in the same run, on the
same private redis-server or RabbitMQ, are in :mod:`benchmarks.rpc_baselines`: raw redis-py
(a list and Pub/Sub reply channels), raw aio-pika (direct reply-to) and FastStream's
``broker.request`` on each.

Names: ``bench.<run>.<backend>.rpc*``; RabbitMQ objects are deleted when the run ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from benchmarks import rpc_baselines
from benchmarks.backends import bench_options, make_broker, rabbit_names
from benchmarks.busonly import stop_within
from benchmarks.config import BenchConfig
from benchmarks.http_phases import percentiles
from benchmarks.payload import PayloadFactory
from benchmarks.report import Report
from benchmarks.services import RABBIT_URL, Services, Target
from bus.broker import BaseBroker
from bus.message import Message
from bus.rpc import CALL_GROUP

Call = rpc_baselines.Call
CALL_TIMEOUT = rpc_baselines.CALL_TIMEOUT
SERVER_CONCURRENCY = rpc_baselines.SERVER_CONCURRENCY

IN_FLIGHT = (1, 64)
WARM_UP = 20  # calls before the clock starts: inboxes, presence, connections
SLICES = 4
STOP_TIMEOUT = 15.0

Opener = contextlib.AbstractAsyncContextManager[Call]
Guard = Callable[[Report, str, str, Awaitable[None]], Awaitable[None]]
Step = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Calls:
    """Timed calls: successful calls, wall seconds, latencies in microseconds, failures."""

    calls: int
    elapsed: float
    latencies_us: list[int]
    errors: int = 0
    first_error: str = ""

    @property
    def rate(self) -> float:
        """Successful calls per second."""
        return self.calls / max(self.elapsed, 1e-9)

    def __add__(self, other: Calls) -> Calls:
        return Calls(
            self.calls + other.calls,
            self.elapsed + other.elapsed,
            sorted(self.latencies_us + other.latencies_us),
            self.errors + other.errors,
            self.first_error or other.first_error,
        )


async def drive(call: Call, body: bytes, in_flight: int, duration: float) -> Calls:
    """Keep ``in_flight`` calls going for ``duration`` seconds; a wrong reply counts as an error."""
    latencies: list[int] = []
    failures: list[str] = []
    deadline = time.perf_counter() + duration

    async def worker() -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter_ns()
            try:
                reply = await call(body)
            except Exception as exc:  # a failed call is counted, not fatal to the phase
                failures.append(f"{type(exc).__name__}: {exc}")
                continue
            if reply != body:
                failures.append(f"wrong reply of {len(reply)} bytes")
                continue
            latencies.append((time.perf_counter_ns() - started) // 1000)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return Calls(len(latencies), elapsed, latencies, len(failures), failures[0] if failures else "")


async def interleave(
    callers: dict[str, Call], body: bytes, in_flight: int, duration: float
) -> dict[str, Calls]:
    """``duration`` seconds of calls per subject, in :data:`SLICES` turns taken in rotation.

    Subjects take turns so that a neighbour's load on the shared cores falls on all of them
    alike, and each ratio compares figures of the same moments.
    """
    totals = {subject: Calls(0, 0.0, []) for subject in callers}
    for _ in range(SLICES):
        for subject, call in callers.items():
            totals[subject] += await drive(call, body, in_flight, duration / SLICES)
    return totals


async def record(report: Report, subject: str, in_flight: int, phase: Calls) -> None:
    """calls/s at ``in_flight``; at 1 in flight also the p50/p99 of one call."""
    if not phase.calls:
        raise RuntimeError(f"no call succeeded ({phase.errors} failed: {phase.first_error})")
    variant = f"calls/s ({in_flight} in flight)"
    report.add("rpc", subject, variant, phase.rate, "calls/s", calls=phase.calls,
               seconds=round(phase.elapsed, 3), errors=phase.errors,
               first_error=phase.first_error)  # fmt: skip
    if in_flight == 1:
        marks = percentiles(phase.latencies_us)
        for name in ("p50", "p99"):
            report.add("rpc", subject, name, marks[name] / 1000, "ms", calls=phase.calls)


def rpc_steps(backends: list[str]) -> int:
    """Progress steps of the scenario: one per backend."""
    return len(backends)


async def measure_rpc(
    config: BenchConfig, report: Report, services: Services, step: Step, guard: Guard
) -> None:
    """Every subject of the scenario on every reachable backend of the run."""
    duration = max(0.25, min(config.ingest_duration, 10.0) / 2)
    body = PayloadFactory(config.payload_size).message(0, time.monotonic_ns())
    for backend in config.backends:
        target = services.targets.get(backend)
        if target is not None:
            step(f"{backend}: request/reply")
            await _measure_backend(report, services, target, body, duration, guard)


async def _measure_backend(
    report: Report,
    services: Services,
    target: Target,
    body: bytes,
    duration: float,
    guard: Guard,
) -> None:
    callers: dict[str, Call] = {}
    async with contextlib.AsyncExitStack() as stack:
        for subject, opener in _subjects(services, target).items():
            await guard(report, "rpc", subject, _open(stack, callers, subject, opener(), body))
        for in_flight in IN_FLIGHT:
            phases = await interleave(callers, body, in_flight, duration)
            for subject, phase in phases.items():
                await guard(report, "rpc", subject, record(report, subject, in_flight, phase))


async def _open(
    stack: contextlib.AsyncExitStack,
    callers: dict[str, Call],
    subject: str,
    opener: contextlib.AbstractAsyncContextManager[Call],
    body: bytes,
) -> None:
    call = await stack.enter_async_context(opener)
    for _ in range(WARM_UP):
        if await call(body) != body:
            raise RuntimeError("the echo server sent back something else")
    callers[subject] = call


_BASELINES = {
    "redis": (
        ("redis-py", rpc_baselines.raw_redis),
        ("faststream-redis", rpc_baselines.faststream_redis),
    ),
    "rabbitmq": (
        ("aio-pika", rpc_baselines.raw_rabbit),
        ("faststream-rabbit", rpc_baselines.faststream_rabbit),
    ),
}


def _subjects(services: Services, target: Target) -> dict[str, Callable[[], Opener]]:
    """Our broker on ``target`` and, on Redis and RabbitMQ, its raw client and FastStream."""
    subjects: dict[str, Callable[[], Opener]] = {target.backend: lambda: _ours(services, target)}
    for subject, opener in _BASELINES.get(target.backend, ()):
        name = f"bench.{services.run_id}.{target.backend}.rpc.{subject}"
        if target.backend == "rabbitmq":
            services.forget_rabbit("queue", name)
            subjects[subject] = functools.partial(opener, RABBIT_URL, name)
        else:
            subjects[subject] = functools.partial(opener, services.redis_url(), name)
    return subjects


# -- omnibus ------------------------------------------------------------------------------------


def _two_brokers(services: Services, target: Target) -> tuple[BaseBroker, BaseBroker]:
    instance = f"bench-{services.run_id}"
    if target.backend == "memory":
        from bus.memory import MemoryBroker, MemoryHub

        hub = MemoryHub()  # two brokers on one hub behave like two processes on one server
        return MemoryBroker(hub, instance=f"{instance}-s"), MemoryBroker(hub, instance=instance)
    home = services.workdir
    server = make_broker(target, instance=f"{instance}-s", home=home)
    return server, make_broker(target, instance=instance, home=home)


@contextlib.asynccontextmanager
async def _ours(services: Services, target: Target) -> AsyncIterator[Call]:
    topic = f"bench.{services.run_id}.{target.backend}.rpc"
    server, caller = _two_brokers(services, target)

    async def echo(request: Message) -> bytes:
        return request.data

    async def call(data: bytes) -> bytes:
        return (await caller.request(topic, Message(data=data), timeout=CALL_TIMEOUT)).data

    try:
        async with server, caller:
            options = bench_options("bench-rpc", concurrency=SERVER_CONCURRENCY)
            subscription = await server.serve(topic, echo, options)
            try:
                yield call
            finally:
                await stop_within(subscription, STOP_TIMEOUT)
    finally:
        if target.backend == "rabbitmq":
            _forget_rabbit(services, topic, server, caller)


def _forget_rabbit(services: Services, topic: str, *brokers: BaseBroker) -> None:
    for kind, name in rabbit_names(topic, CALL_GROUP):
        services.forget_rabbit(kind, name)
    for broker in brokers:
        for name in getattr(broker, "declared_queues", ()):
            services.forget_rabbit("queue", name)
        for name in getattr(broker, "declared_exchanges", ()):
            services.forget_rabbit("exchange", name)
