"""Scenario ``invoke``: service invocation through two sidecars against a direct HTTP call.

The callee app is the bare Starlette endpoint of the ingest ceiling (it reads the body and
answers 204); the method invoked is its publish path, so the same request reaches the same app
either way:

- direct: the generator POSTs the payload to the app itself;
- per backend (the system bus is the run's ``pubsub`` component): a callee sidecar
  (``--app-port`` = the app) and a caller sidecar (no app); the generator POSTs to
  ``/v1.0/invoke/<callee>/method/<the app's path>`` on the caller's sidecar.

Each is measured with 32 requests in flight (calls/s, half of ``--duration``) and at the fixed
rate (``--rate``, default 1,000 calls/s, open loop, half the latency duration; p50/p99 of the
generator's round trips).  Async invocation (``Prefer: respond-async``): a fixed number of
submissions with 32 in flight (submissions/s = 202s per second), then the caller's sidecar is
polled until none is pending (completions/s = submissions / (last completion - first
submission)).  Baseline of the async path on Redis: arq on the same redis-server, 32 enqueuers
and a worker (32 jobs at once, 10 ms polls) whose job POSTs the payload to the same app, until
every result is fetched.  arq is optional: its redis<6 pin conflicts with omnibus's redis, so it
is not in the bench extra (``pip install --no-deps arq``); without it the baseline is skipped.
"""

from __future__ import annotations

import asyncio
import importlib.util
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from benchmarks.backends import rabbit_names
from benchmarks.http_phases import HttpRun, percentiles
from benchmarks.loadgen import LoadResult
from benchmarks.payload import PayloadFactory
from benchmarks.processes import Child, get_json
from benchmarks.report import Report
from bus.rpc import CALL_GROUP
from invoke.async_client import RESULTS_TOPIC_PREFIX
from invoke.call import ASYNC_TOPIC_PREFIX, CALL_TOPIC_PREFIX

APP_PATH = "/v1.0/publish/pubsub/invoke"  # a path the ceiling app answers with 204
IN_FLIGHT = 32
READY_TIMEOUT = 30.0
POLL = 0.1
ASYNC = (("Prefer", "respond-async"),)
RATE = f"calls/s ({IN_FLIGHT} in flight)"

Guard = Callable[[Report, str, str, Awaitable[None]], Awaitable[None]]


def invoke_steps(backends: list[str]) -> int:
    """Progress steps of the scenario."""
    return 3 + 4 * sum(1 for b in backends if b != "memory")


async def measure_invoke(run: HttpRun, guard: Guard) -> None:
    """The direct call, then every backend through two sidecars, then arq on Redis."""
    backends = [b for b in run.config.backends if b in run.services.targets and b != "memory"]
    if not backends:
        return
    app = run.children.ceiling()
    try:
        await guard(run.report, "invoke", "direct", _direct(run, app))
        for backend in backends:
            await guard(run.report, "invoke", backend, _through_sidecars(run, backend, app))
        if "redis" in backends:
            await guard(run.report, "invoke", "arq", _arq(run, app))
    finally:
        run.children.stop(app)


async def _direct(run: HttpRun, app: Child) -> None:
    run.step("invoke: direct calls to the app")
    await _sync_phases(run, "direct", app.url(APP_PATH))


async def _sync_phases(run: HttpRun, subject: str, url: str) -> None:
    throughput = max(run.config.ingest_duration / 2, 0.5)
    latency = max(run.config.latency_duration / 2, 1.0)
    load = await run.generator.run(
        replace(run.load(url, duration=throughput), connections=IN_FLIGHT)
    )
    _add_rate(run.report, subject, RATE, load)
    run.step(f"invoke: {subject} at {run.config.rate:g} calls/s")
    spec = run.load(url, duration=latency, rate=run.config.rate, record_round_trips=True)
    load = await run.generator.run(spec)
    if not load.round_trips_us:
        raise RuntimeError(f"no call succeeded at the fixed rate ({load.first_error})")
    marks = percentiles(sorted(load.round_trips_us))
    for name in ("p50", "p99"):
        run.report.add("invoke", subject, name, marks[name] / 1000, "ms",
                       calls=len(load.round_trips_us), errors=load.errors,
                       first_error=load.first_error, achieved_rate=round(load.rate, 1))  # fmt: skip


def _add_rate(report: Report, subject: str, variant: str, load: LoadResult) -> None:
    report.add("invoke", subject, variant, load.rate, "calls/s", requests=load.requests,
               errors=load.errors, first_error=load.first_error,
               seconds=round(load.elapsed, 3), generator_cores=round(load.cores, 3))  # fmt: skip


async def _through_sidecars(run: HttpRun, backend: str, app: Child) -> None:
    target = run.services.targets[backend]
    callee_id = f"bench-callee-{run.run_id}-{backend}"
    caller_id = f"bench-caller-{run.run_id}-{backend}"
    run.step(f"{backend}: starting the invocation sidecars")
    if backend == "rabbitmq":
        _forget_rabbit(run, callee_id, caller_id)
    callee = run.children.sidecar(callee_id, target, app=app, home=run.home)
    caller = run.children.sidecar(caller_id, target, home=run.home)
    try:
        url = caller.url(f"/v1.0/invoke/{callee_id}/method{APP_PATH}")
        await asyncio.to_thread(_until_answered, url)
        run.step(f"{backend}: sync invocation, {IN_FLIGHT} in flight")
        await _sync_phases(run, backend, url)
        run.step(f"{backend}: async invocation")
        await _async_phase(run, backend, url, caller)
    finally:
        for child in (caller, callee):
            run.children.stop(child)


def _forget_rabbit(run: HttpRun, callee_id: str, caller_id: str) -> None:
    """Every queue and exchange the two sidecars may declare, deleted when the run ends."""
    topics = [CALL_TOPIC_PREFIX + callee_id, ASYNC_TOPIC_PREFIX + callee_id]
    topics += [RESULTS_TOPIC_PREFIX + app_id for app_id in (callee_id, caller_id)]
    for topic in topics:
        for group in (CALL_GROUP, callee_id, caller_id):
            for kind, name in rabbit_names(topic, group):
                run.services.forget_rabbit(kind, name)


def _until_answered(url: str) -> None:
    """Invoke until the callee answers 2xx: its presence must reach the caller first."""
    deadline = time.monotonic() + READY_TIMEOUT
    status, last = 0, ""
    while time.monotonic() < deadline:
        request = urllib.request.Request(url, data=b"{}", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                status = response.status
        except urllib.error.HTTPError as exc:
            status, last = exc.code, exc.read()[:200].decode(errors="replace")
        except OSError as exc:
            status, last = 0, str(exc)
        if 200 <= status < 300:
            return
        time.sleep(0.2)
    raise TimeoutError(f"the callee never answered through the caller: {status} {last}")


async def _async_phase(run: HttpRun, backend: str, url: str, caller: Child) -> None:
    count = max(200, run.config.messages // 3)
    spec = replace(run.load(url, messages=count, headers=ASYNC), connections=IN_FLIGHT)
    load = await run.generator.run(spec)
    _add_rate(run.report, backend, "async submissions/s", load)
    listing = caller.url("/v1.0-alpha1/invocations?status=pending")
    last_change, pending = time.monotonic(), -1
    while True:
        found: dict[str, Any] = await asyncio.to_thread(get_json, listing)
        now = len(found.get("invocations", []))
        if now == 0:
            break
        if now != pending:
            pending, last_change = now, time.monotonic()
        elif time.monotonic() - last_change > 20.0:
            raise TimeoutError(f"{now} async invocations still pending, none finished for 20 s")
        await asyncio.sleep(POLL)
    rate = load.messages / max(time.monotonic() - load.started, 1e-9)
    run.report.add("invoke", backend, "async completions/s", rate, "calls/s",
                   submitted=load.messages, errors=load.errors,
                   first_error=load.first_error)  # fmt: skip


async def _arq(run: HttpRun, app: Child) -> None:
    if importlib.util.find_spec("arq") is None:
        raise RuntimeError("arq is not installed (pip install --no-deps arq)")
    run.step("invoke: arq enqueue, run, fetch results")
    import aiohttp
    from arq import create_pool
    from arq.connections import RedisSettings
    from arq.worker import Worker, func

    assert run.services.redis is not None
    settings = RedisSettings(host="127.0.0.1", port=run.services.redis.port)
    url, count = app.url(APP_PATH), max(200, run.config.messages // 3)
    body = PayloadFactory(run.config.payload_size).message(0, time.monotonic_ns())

    async def call_app(ctx: dict[str, Any], data: bytes) -> int:
        async with ctx["session"].post(url, data=data) as response:
            await response.read()
            return int(response.status)

    async def startup(ctx: dict[str, Any]) -> None:
        ctx["session"] = aiohttp.ClientSession()

    async def shutdown(ctx: dict[str, Any]) -> None:
        await ctx["session"].close()

    pool = await create_pool(settings)
    worker = Worker(functions=[func(call_app, name="call_app")], redis_settings=settings,
                    max_jobs=IN_FLIGHT, poll_delay=0.01, handle_signals=False,
                    on_startup=startup, on_shutdown=shutdown, keep_result=60)  # fmt: skip
    running = asyncio.create_task(worker.async_run())
    try:
        started = time.perf_counter()
        jobs = await _enqueue(pool, body, count)
        enqueued = time.perf_counter()
        statuses = [await job.result(timeout=60, poll_delay=0.01) for job in jobs]
        finished = time.perf_counter()
    finally:
        await worker.close()
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await pool.aclose()
    failed = sum(1 for status in statuses if not 200 <= status < 300)
    run.report.add("invoke", "arq", "async submissions/s", count / (enqueued - started),
                   "calls/s", submitted=count)  # fmt: skip
    run.report.add("invoke", "arq", "async completions/s", count / (finished - started),
                   "calls/s", submitted=count, errors=failed)  # fmt: skip


async def _enqueue(pool: Any, body: bytes, count: int) -> list[Any]:
    """``count`` jobs enqueued by :data:`IN_FLIGHT` concurrent enqueuers."""
    jobs: list[Any] = []
    share = -(-count // IN_FLIGHT)

    async def enqueuer(n: int) -> None:
        for _ in range(n):
            jobs.append(await pool.enqueue_job("call_app", body))

    sizes = [min(share, count - i * share) for i in range(IN_FLIGHT) if count - i * share > 0]
    await asyncio.gather(*(enqueuer(n) for n in sizes))
    return jobs
