"""Scenarios 1, 2, 3 and 5 through real processes: generator -> sidecar -> bus -> sidecar -> app.

Per backend: a subscriber app, a subscriber sidecar (``--app-port``) and a publisher sidecar
(no app) are started; then, in order, idle RSS, publish ingest (single, bulk), end-to-end (single,
bulk), and the fixed-rate phase that gives both latency percentiles and the sidecars' CPU cost.
The bare Starlette ceiling runs once per run with the same generator.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.backends import PUBSUB_NAME, bench_options, make_broker, rabbit_names
from benchmarks.busonly import create_group
from benchmarks.config import BenchConfig
from benchmarks.loadgen import LoadGenerator, LoadResult, LoadSpec
from benchmarks.machine import ProcStat
from benchmarks.processes import Child, Children, get_json
from benchmarks.profiling import Recording
from benchmarks.report import Report
from benchmarks.services import Services, Target

PUBLISH = "/v1.0/publish/{pubsub}/{topic}"
BULK_PUBLISH = "/v1.0-alpha1/publish/bulk/{pubsub}/{topic}"
POLL = 0.05
STALL = 20.0  # seconds without a new delivery before a phase is given up
IDLE_SETTLE = 1.0  # seconds between start-up and the idle RSS reading


@dataclass
class HttpRun:
    """What the HTTP phases share: configuration, report, generator, processes, names."""

    config: BenchConfig
    report: Report
    generator: LoadGenerator
    children: Children
    services: Services
    run_id: str
    home: Path
    step: Callable[[str], None]

    def load(self, url: str, **kwargs: Any) -> LoadSpec:
        """A load phase against ``url`` with the run's payload size and generator shape."""
        return LoadSpec(
            url=url,
            payload_size=self.config.payload_size,
            connections=self.config.connections,
            processes=self.config.generators,
            **kwargs,
        )


def _record_load(run: HttpRun, scenario: str, subject: str, variant: str, load: LoadResult) -> None:
    run.report.add(
        scenario,
        subject,
        variant,
        load.rate,
        "msg/s",
        messages=load.messages,
        requests=load.requests,
        errors=load.errors,
        first_error=load.first_error,
        seconds=round(load.elapsed, 3),
        generator_cores=round(load.cores, 3),
    )


async def measure_ceiling(run: HttpRun) -> None:
    """Ingest against the bare Starlette endpoint: the HTTP ceiling, and the generator check."""
    child = run.children.ceiling()
    try:
        for variant, path, bulk in (("single", PUBLISH, 0), ("bulk", BULK_PUBLISH, 100)):
            run.step(f"ceiling: bare Starlette, {variant}")
            url = child.url(path.format(pubsub=PUBSUB_NAME, topic="ceiling"))
            spec = run.load(url, bulk_size=bulk, duration=run.config.ingest_duration)
            _record_load(run, "ingest", "starlette", variant, await run.generator.run(spec))
    finally:
        run.children.stop(child)


async def measure_backend(run: HttpRun, target: Target) -> None:
    """Every HTTP scenario of the run for one backend."""
    backend, config = target.backend, run.config
    topics = {name: f"bench.{run.run_id}.{backend}.{name}" for name in _TOPIC_NAMES}
    sub_id, pub_id = f"bench-sub-{run.run_id}", f"bench-pub-{run.run_id}"
    if backend == "rabbitmq":
        for topic in topics.values():
            for kind, name in rabbit_names(topic, sub_id) + rabbit_names(topic, "bench-ingest"):
                run.services.forget_rabbit(kind, name)
    run.step(f"{backend}: starting sidecars")
    await _ingest_groups(run, target, [topics["ingest"], topics["ingest-bulk"]])
    app = run.children.subscriber([topics["e2e"], topics["latency"]], [topics["e2e-bulk"]])
    subscriber = run.children.sidecar(sub_id, target, app=app, home=run.home)
    publisher = run.children.sidecar(pub_id, target, home=run.home)
    try:
        await asyncio.sleep(IDLE_SETTLE)
        sidecars = {"publisher": publisher, "subscriber": subscriber}
        if config.wants("cost"):
            for role, child in sidecars.items():
                stat = child.stat()
                run.report.add(
                    "cost", backend, f"rss idle ({role})", stat.rss_mb, "MB", pid=child.pid
                )
        if config.wants("ingest"):
            with _profiled(run, backend, {"publisher": publisher}, phase="ingest"):
                await _ingest(run, backend, publisher, topics)
        if config.wants("e2e"):
            with _profiled(run, backend, sidecars, phase="e2e"):
                await _end_to_end(run, backend, publisher, app, topics)
        if config.wants("latency") or config.wants("cost"):
            with _profiled(run, backend, sidecars, phase="fixed-rate"):
                await _fixed_rate(run, backend, publisher, app, sidecars, topics["latency"])
    finally:
        for child in (publisher, subscriber, app):
            run.children.stop(child)


@contextlib.contextmanager
def _profiled(run: HttpRun, backend: str, sidecars: dict[str, Child], phase: str) -> Iterator[None]:
    """With ``--profile``: py-spy the sidecars while the block runs; summaries in the report."""
    if not run.config.profile:
        yield
        return
    run.config.output.mkdir(parents=True, exist_ok=True)
    recordings = {
        role: Recording.start(
            child.pid, run.config.output / f"profile-{backend}-{phase}-{role}.txt"
        )
        for role, child in sidecars.items()
    }
    try:
        yield
    finally:
        profiles = run.report.checks.setdefault("profiles", {}).setdefault(backend, {})
        profiles = profiles.setdefault(phase, {})
        for role, recording in recordings.items():
            profiles[role] = recording.finish()


_TOPIC_NAMES = ("ingest", "ingest-bulk", "e2e", "e2e-bulk", "latency")


async def _ingest_groups(run: HttpRun, target: Target, topics: list[str]) -> None:
    """Give the ingest topics a consumer group, so the broker stores what is published."""
    broker = make_broker(target, instance=f"bench-ingest-{run.run_id}", home=run.home)
    async with broker:
        for topic in topics:
            await create_group(broker, topic, bench_options("bench-ingest"))


async def _ingest(run: HttpRun, backend: str, publisher: Child, topics: dict[str, str]) -> None:
    for variant, path, bulk, topic in (
        ("single", PUBLISH, 0, topics["ingest"]),
        ("bulk", BULK_PUBLISH, 100, topics["ingest-bulk"]),
    ):
        run.step(f"{backend}: publish ingest, {variant}")
        url = publisher.url(path.format(pubsub=PUBSUB_NAME, topic=topic))
        spec = run.load(url, bulk_size=bulk, duration=run.config.ingest_duration)
        _record_load(run, "ingest", backend, variant, await run.generator.run(spec))


async def _end_to_end(
    run: HttpRun, backend: str, publisher: Child, app: Child, topics: dict[str, str]
) -> None:
    config = run.config
    for variant, path, bulk, topic, count in (
        ("single", PUBLISH, 0, topics["e2e"], config.messages),
        ("bulk", BULK_PUBLISH, 100, topics["e2e-bulk"], config.batched_messages),
    ):
        run.step(f"{backend}: end-to-end, {variant}")
        url = publisher.url(path.format(pubsub=PUBSUB_NAME, topic=topic))
        load = await run.generator.run(run.load(url, bulk_size=bulk, messages=count))
        stats = await wait_delivered(app, topic, load.messages)
        last = stats["last_ns"] / 1e9
        rate = stats["unique"] / max(last - load.started, 1e-9)
        run.report.add(
            "e2e",
            backend,
            variant,
            rate,
            "msg/s",
            published=load.messages,
            delivered=stats["unique"],
            deliveries=stats["count"],
            errors=load.errors,
            first_error=load.first_error,
            publish_rate=round(load.rate),
            generator_cores=round(load.cores, 3),
        )


async def _fixed_rate(
    run: HttpRun,
    backend: str,
    publisher: Child,
    app: Child,
    sidecars: dict[str, Child],
    topic: str,
) -> None:
    config = run.config
    run.step(f"{backend}: {config.rate:g} msg/s for {config.latency_duration:g}s")
    url = publisher.url(PUBLISH.format(pubsub=PUBSUB_NAME, topic=topic))
    before = {role: child.stat() for role, child in sidecars.items()}
    spec = run.load(url, rate=config.rate, duration=config.latency_duration)
    load = await run.generator.run(spec)
    stats = await wait_delivered(app, topic, load.messages, latencies=True)
    after = {role: child.stat() for role, child in sidecars.items()}
    if config.wants("latency"):
        _record_latency(run, backend, sorted(stats["latencies_us"]), load)
    if config.wants("cost"):
        for role in sidecars:
            _record_cost(run, backend, role, before[role], after[role], load)


def _record_latency(run: HttpRun, backend: str, latencies: list[int], load: LoadResult) -> None:
    for name, value in percentiles(latencies).items():
        run.report.add(
            "latency",
            backend,
            name,
            value / 1000,
            "ms",
            rate=run.config.rate,
            achieved_rate=round(load.rate, 1),
            received=len(latencies),
            published=load.messages,
        )


def _record_cost(
    run: HttpRun, backend: str, role: str, before: ProcStat, after: ProcStat, load: LoadResult
) -> None:
    # CPU seconds per 1,000 messages (until every one was delivered) = cores per 1,000 msg/s.
    cpu = after.cpu_seconds - before.cpu_seconds
    per_thousand = cpu / max(load.messages / 1000, 1e-9)
    run.report.add(
        "cost",
        backend,
        f"cpu per 1k msg/s ({role})",
        per_thousand,
        "cores",
        cpu_seconds=round(cpu, 3),
        messages=load.messages,
        rate=round(load.rate, 1),
    )
    run.report.add("cost", backend, f"rss under load ({role})", after.rss_mb, "MB")
    run.report.add("cost", backend, f"peak rss ({role})", after.peak_rss_mb, "MB")


async def wait_delivered(
    app: Child, topic: str, expected: int, *, latencies: bool = False
) -> dict[str, Any]:
    """Poll the app until ``expected`` distinct messages of ``topic`` arrived (or it stalls)."""
    query = f"/stats?topic={topic}"
    last_unique, last_change = -1, time.monotonic()
    while True:
        stats: dict[str, Any] = await asyncio.to_thread(get_json, app.url(query))
        if stats["unique"] >= expected:
            break
        if stats["unique"] != last_unique:
            last_unique, last_change = stats["unique"], time.monotonic()
        elif time.monotonic() - last_change > STALL:
            raise TimeoutError(f"{topic}: {stats['unique']} of {expected} delivered, then nothing")
        await asyncio.sleep(POLL)
    if latencies:
        stats = await asyncio.to_thread(get_json, app.url(query + "&latencies=1"))
    return stats


def percentiles(sorted_values: list[int]) -> dict[str, float]:
    """p50, p90, p99 (nearest rank) and max of already sorted values; empty -> nothing."""
    if not sorted_values:
        return {}
    count = len(sorted_values)

    def rank(p: float) -> float:
        return float(sorted_values[min(count - 1, max(0, int(p * count + 0.5) - 1))])

    return {
        "p50": rank(0.50),
        "p90": rank(0.90),
        "p99": rank(0.99),
        "max": float(sorted_values[-1]),
    }
