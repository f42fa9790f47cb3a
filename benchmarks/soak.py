"""Scenario ``soak`` (opt-in: ``--scenarios soak``): a long fixed-rate stream, checked for leaks.

Per backend, a subscriber app, a subscriber sidecar and a publisher sidecar (as the end-to-end
scenario has them); the generator publishes ``--soak-rate`` msg/s (default 1,000) for
``--soak-duration`` seconds (default 600; ``--quick``: 20).  Every second each sidecar's RSS and
open file descriptors are read with psutil, and its thread count: the sidecar does not report
its asyncio task count (``/v1.0/metadata``'s ``extended`` holds only what apps PUT there), so
threads stand in for the resources it could leak outside its heap.

A series is judged flat when its mean over the last 5 s is less than 5% above its mean over the
5 s after the warm-up (the first minute; ``--quick``: the first 5 s).  Each series is a
measurement ``<what> growth (<role>)`` in %, held to that 5% in benchmarks/goals.py (the table's
goal column) and with ``flat`` in its details.  The plot of every series is
``soak-<backend>.png`` in the results directory (listed under ``checks.soak_plots`` of the
results JSON).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean

import psutil

from benchmarks.backends import PUBSUB_NAME, rabbit_names
from benchmarks.http_phases import PUBLISH, HttpRun, wait_delivered
from benchmarks.processes import Child
from benchmarks.report import Report

FLAT_GROWTH = 0.05  # the most a series may grow after the warm-up
WINDOW = 5.0  # seconds averaged at either end of the judged span
INTERVAL = 1.0  # seconds between samples
FULL_WARMUP = 60.0
QUICK_WARMUP = 5.0
SERIES = (("rss", "MB"), ("fds", "open"), ("threads", "count"))

Guard = Callable[[Report, str, str, Awaitable[None]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Sample:
    """One reading of one process, ``at`` seconds after the stream started."""

    at: float
    rss: float  # MB
    fds: int
    threads: int


def read_sample(process: psutil.Process, started: float) -> Sample:
    """RSS, open descriptors and threads of ``process`` now."""
    with process.oneshot():
        return Sample(
            at=time.monotonic() - started,
            rss=process.memory_info().rss / 1e6,
            fds=process.num_fds(),
            threads=process.num_threads(),
        )


def growth(samples: list[Sample], name: str, warmup: float) -> tuple[float, float, float]:
    """(baseline, final, relative growth) of one series after ``warmup`` seconds."""
    later = [s for s in samples if s.at >= warmup] or samples[-1:]
    start = later[0].at
    head = [float(getattr(s, name)) for s in later if s.at < start + WINDOW]
    tail_from = later[-1].at - WINDOW
    tail = [float(getattr(s, name)) for s in later if s.at > tail_from]
    baseline, final = fmean(head), fmean(tail)
    return baseline, final, (final - baseline) / baseline if baseline else 0.0


def is_flat(baseline: float, final: float) -> bool:
    """Growth under 5% (the goal benchmarks/goals.py holds each series to)."""
    return final < baseline * (1 + FLAT_GROWTH)


def soak_steps(backends: list[str]) -> int:
    """Progress steps of the scenario."""
    return sum(1 for b in backends if b != "memory")


async def measure_soak(run: HttpRun, guard: Guard) -> None:
    """The soak stream on every backend two sidecar processes can share."""
    for backend in run.config.backends:
        if backend in run.services.targets and backend != "memory":
            await guard(run.report, "soak", backend, _soak_backend(run, backend))


async def _soak_backend(run: HttpRun, backend: str) -> None:
    target = run.services.targets[backend]
    topic = f"bench.{run.run_id}.{backend}.soak"
    sub_id, pub_id = f"bench-soak-sub-{run.run_id}", f"bench-soak-pub-{run.run_id}"
    if backend == "rabbitmq":
        for kind, name in rabbit_names(topic, sub_id):
            run.services.forget_rabbit(kind, name)
    app = run.children.subscriber([topic], [])
    subscriber = run.children.sidecar(sub_id, target, app=app, home=run.home)
    publisher = run.children.sidecar(pub_id, target, home=run.home)
    try:
        sidecars = {"subscriber": subscriber, "publisher": publisher}
        series = await _stream(run, backend, publisher, app, sidecars, topic)
        _judge(run, backend, series)
        if run.config.plots:
            path = plot_soak(backend, series, run.config.output, _warmup(run))
            run.report.checks.setdefault("soak_plots", {})[backend] = str(path)
    finally:
        for child in (publisher, subscriber, app):
            run.children.stop(child)


async def _stream(
    run: HttpRun,
    backend: str,
    publisher: Child,
    app: Child,
    sidecars: dict[str, Child],
    topic: str,
) -> dict[str, list[Sample]]:
    config = run.config
    run.step(f"{backend}: soak, {config.soak_rate:g} msg/s for {config.soak_duration:g}s")
    url = publisher.url(PUBLISH.format(pubsub=PUBSUB_NAME, topic=topic))
    series: dict[str, list[Sample]] = {role: [] for role in sidecars}
    sampler = asyncio.create_task(_sample(sidecars, series, time.monotonic()))
    try:
        spec = run.load(url, rate=config.soak_rate, duration=config.soak_duration)
        load = await run.generator.run(spec)
        stats = await wait_delivered(app, topic, load.messages)
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
    run.report.add(
        "soak",
        backend,
        "delivered",
        stats["unique"],
        "msg",
        published=load.messages,
        errors=load.errors,
        first_error=load.first_error,
        achieved_rate=round(load.rate, 1),
    )
    return series


async def _sample(sidecars: dict[str, Child], series: dict[str, list[Sample]], t0: float) -> None:
    processes = {role: psutil.Process(child.pid) for role, child in sidecars.items()}
    while True:
        for role, process in processes.items():
            series[role].append(await asyncio.to_thread(read_sample, process, t0))
        await asyncio.sleep(INTERVAL)


def _warmup(run: HttpRun) -> float:
    return QUICK_WARMUP if run.config.quick else FULL_WARMUP


def _judge(run: HttpRun, backend: str, series: dict[str, list[Sample]]) -> None:
    for role, samples in series.items():
        for name, unit in SERIES:
            baseline, final, grew = growth(samples, name, _warmup(run))
            run.report.add(
                "soak",
                backend,
                f"{name} growth ({role})",
                grew * 100,
                "%",
                flat=is_flat(baseline, final),
                baseline=round(baseline, 2),
                final=round(final, 2),
                series_unit=unit,
                samples=len(samples),
            )


def plot_soak(backend: str, series: dict[str, list[Sample]], output: Path, warmup: float) -> Path:
    """``soak-<backend>.png``: RSS, descriptors and threads of each sidecar over time."""
    import matplotlib  # only when plotting

    matplotlib.use("Agg")  # no display on servers and CI, as benchmarks/plots.py has it
    import matplotlib.pyplot as plt

    output.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(len(SERIES), 1, figsize=(8, 7), sharex=True)
    for ax, (name, unit) in zip(axes, SERIES, strict=True):
        for role, samples in series.items():
            ax.plot([s.at for s in samples], [getattr(s, name) for s in samples], label=role)
        ax.axvline(warmup, color="#9e9e9e", linestyle="--", linewidth=0.8)
        ax.set_ylabel(f"{name} ({unit})")
        ax.legend(loc="lower right", fontsize="small")
    axes[-1].set_xlabel("seconds since the stream started (dashed: end of warm-up)")
    fig.suptitle(f"soak: {backend}")
    fig.tight_layout()
    path = output / f"soak-{backend}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
