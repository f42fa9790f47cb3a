"""One run from start to report: brokers, phases with rich progress, JSON, plots, BENCHMARKS.md.

A phase that fails (a broker that dies, a sidecar that does not start, a stall) is recorded as
skipped with its reason, and the run goes on with the next one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from benchmarks import baselines
from benchmarks.backends import bench_options, make_broker, rabbit_names
from benchmarks.busonly import Drain, measure_bus, payloads
from benchmarks.config import BenchConfig
from benchmarks.goals import figure_rows
from benchmarks.http_phases import HttpRun, measure_backend, measure_ceiling
from benchmarks.invoke_bench import invoke_steps, measure_invoke
from benchmarks.loadgen import LoadGenerator
from benchmarks.machine import describe_machine
from benchmarks.markdown import write_markdown
from benchmarks.processes import Children
from benchmarks.render import print_report
from benchmarks.report import (
    Measurement,
    Report,
    Skip,
    combine,
    load_measurements,
    save_json,
)
from benchmarks.rpc import measure_rpc
from benchmarks.services import RABBIT_URL, Services, Target
from benchmarks.soak import measure_soak, soak_steps
from benchmarks.state_bench import STORES, measure_state, state_steps

HTTP_SCENARIOS = ("ingest", "e2e", "latency", "cost")
GENERATOR_SATURATED = 0.8  # cores per generator process
Step = Callable[[str], None]


async def run_bench(config: BenchConfig, console: Console | None = None) -> dict[str, Any]:
    """Run ``config``; print the tables; write JSON, plots and Markdown; return the document.

    With ``repeat`` > 1 every phase runs that many times, each time on brokers of its own (a new
    private redis-server, a new SQLite file, the run's RabbitMQ names deleted after it), so no
    run inherits the data of the one before; each figure is the median of its runs.
    """
    console = console or Console(stderr=True)
    run_id = uuid.uuid4().hex[:8]
    rounds: list[Report] = []
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn())
    with Progress(*columns, TimeElapsedColumn(), console=console, transient=True) as progress:
        task = progress.add_task("starting", total=None)
        for index in range(1, config.repeat + 1):
            prefix = f"run {index}/{config.repeat}: " if config.repeat > 1 else ""

            def step(label: str, prefix: str = prefix) -> None:
                progress.update(task, description=prefix + label, advance=1)

            round_id = run_id if config.repeat == 1 else f"{run_id}r{index}"
            async with Services(config.backends, round_id) as services:
                if index == 1:
                    progress.update(task, total=_steps(config, services) * config.repeat)
                rounds.append(await _one_round(config, services, step))
    return _finish(config, combine(rounds), console)


async def _one_round(config: BenchConfig, services: Services, step: Step) -> Report:
    report = Report(
        config=_config_json(config),
        machine=describe_machine(services.versions),
        command=config.command,
    )
    for backend, reason in services.unavailable.items():
        for scenario in config.scenarios:
            report.skip(scenario, backend, f"broker unavailable: {reason}")
    await _bus_phases(config, report, services, step)
    if config.wants("rpc"):
        await measure_rpc(config, report, services, step, _guarded)
    await _http_phases(config, report, services, services.run_id, step)
    report.finished = time.time()
    return report


def _finish(config: BenchConfig, report: Report, console: Console) -> dict[str, Any]:
    rows = figure_rows(report.measurements)
    report.checks["generator"] = generator_check(report.measurements, report.config)
    report.checks["errors"] = request_errors(report.measurements)
    if config.plots and report.measurements:
        from benchmarks.plots import write_plots  # matplotlib is only imported when plotting

        report.plots = [str(p) for p in write_plots(report.measurements, config.output)]
    document = report.to_json(rows)
    stamped, latest = save_json(document, config.output)
    notes = [f"results: {stamped} (also {latest.name})"]
    if config.markdown is not None:
        notes.append(f"report: {write_markdown(document, config.markdown)}")
    errors = [f"[yellow]{e['summary']}[/yellow]" for e in report.checks["errors"]]
    summary = report.checks["generator"]["summary"]
    print_report(console, rows, report.skipped, [summary, *errors, *notes])
    return document


def request_errors(measurements: Sequence[Measurement]) -> list[dict[str, Any]]:
    """Phases whose requests failed: a figure counts only accepted messages, say so."""
    found = []
    for m in measurements:
        count = m.details.get("errors") or 0
        if count:
            first = m.details.get("first_error", "")
            summary = f"{m.scenario} {m.subject} {m.variant}: {count} failed requests ({first})"
            found.append({"key": list(m.key), "errors": count, "summary": summary})
    return found


def render_saved(path: Path, config: BenchConfig, console: Console) -> dict[str, Any]:
    """Redraw the table, plots and Markdown of a saved run (the JSON itself is not rewritten)."""
    document: dict[str, Any] = json.loads(path.read_text())
    measurements = load_measurements(document)
    rows = figure_rows(measurements)
    document["figures"] = rows
    if config.plots:
        from benchmarks.plots import write_plots

        document["plots"] = [str(p) for p in write_plots(measurements, path.parent)]
    skipped = [Skip(**s) for s in document.get("skipped", [])]
    check = generator_check(measurements, document["config"])
    document.setdefault("checks", {})["generator"] = check
    notes = [check["summary"]]
    if config.markdown is not None:
        notes.append(f"report: {write_markdown(document, config.markdown)}")
    print_report(console, rows, skipped, notes)
    return document


def _config_json(config: BenchConfig) -> dict[str, Any]:
    return {
        k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(config).items()
    }


def _steps(config: BenchConfig, services: Services) -> int:
    backends = [b for b in config.backends if b in services.targets]
    steps = 0
    if config.wants("bus"):
        steps += len(backends) + 3 * ("redis" in backends) + 2 * ("rabbitmq" in backends)
    if config.wants("rpc"):
        steps += len(backends)
    if config.wants("state"):
        steps += state_steps(config.stores)
    if config.wants("invoke"):
        steps += invoke_steps(backends)
    if config.wants("soak"):
        steps += soak_steps(backends)
    http = [b for b in backends if b != "memory"]
    if http and any(config.wants(s) for s in HTTP_SCENARIOS):
        steps += 2 + 6 * len(http)
    return max(steps, 1)


async def _guarded(report: Report, scenario: str, subject: str, work: Awaitable[None]) -> None:
    try:
        await work
    except Exception as exc:  # one failed phase must not lose the rest of the run
        lines = f"{type(exc).__name__}: {exc}".strip().splitlines()
        reason = lines[0] if len(lines) < 3 else f"{lines[0]} ... {lines[-1].strip()}"
        report.skip(scenario, subject, reason[:400])


# -- scenario 4: bus only, and the broker ceilings of scenario 2 ---------------------------------


async def _bus_phases(config: BenchConfig, report: Report, services: Services, step: Step) -> None:
    for backend in config.backends:
        target = services.targets.get(backend)
        if target is None:
            continue
        if config.wants("bus"):
            step(f"{backend}: bus only, consume + ack")
            await _guarded(report, "bus", backend, _bus_ours(config, report, services, target))
            if backend == "redis":
                await _redis_baselines(config, report, services, step)
            if backend == "rabbitmq":
                await _rabbit_baselines(config, report, services, step)
            step(f"{backend}: in-process publish + consume")
            await _guarded(report, "bus", backend, _in_process(config, report, services, backend))
        if config.wants("e2e") and backend in ("redis", "rabbitmq"):
            subject = "redis-py" if backend == "redis" else "aio-pika"
            await _guarded(
                report, "e2e", subject, _raw_end_to_end(config, report, services, backend)
            )


async def _bus_ours(
    config: BenchConfig, report: Report, services: Services, target: Target
) -> None:
    topic, group = f"bench.{services.run_id}.{target.backend}.bus", "bench-bus"
    if target.backend == "rabbitmq":
        for kind, name in rabbit_names(topic, group):
            services.forget_rabbit(kind, name)
    bodies = payloads(config.payload_size, config.batched_messages)
    broker = make_broker(target, instance=f"bench-{services.run_id}", home=services.workdir)
    async with broker:
        options = bench_options(group)
        filled, drained = await measure_bus(broker, topic, options, bodies, config.phase_timeout)
    _add_drain(report, "bus", target.backend, "consume+ack", drained)
    _add_drain(report, "bus", target.backend, "publish (batches of 100)", filled)


def _add_drain(report: Report, scenario: str, subject: str, variant: str, drain: Drain) -> None:
    report.add(
        scenario,
        subject,
        variant,
        drain.rate,
        "msg/s",
        messages=drain.messages,
        seconds=round(drain.elapsed, 3),
        cores=round(drain.cores, 3),
        duplicates=drain.duplicates,
    )


async def _redis_baselines(
    config: BenchConfig, report: Report, services: Services, step: Step
) -> None:
    url, count, timeout = services.redis_url(), config.batched_messages, config.phase_timeout
    bodies = payloads(config.payload_size, count)

    async def raw() -> None:
        stream = f"bench.{services.run_id}.raw"
        await baselines.redis_fill(url, stream, "bench", bodies)
        drain = await baselines.raw_redis_consume(url, stream, "bench", count, timeout)
        _add_drain(report, "bus", "redis-py", "consume+ack", drain)

    async def faststream() -> None:
        single = bodies[: config.messages]  # one message at a time is ~50x slower: fewer of them
        drains: dict[str, Drain] = {}
        for mode, batch, chunk in (("per-message", False, single), ("batch", True, bodies)):
            stream = f"bench.{services.run_id}.faststream.{mode}"
            await baselines.redis_fill(url, stream, "bench", chunk)
            drains[mode] = await baselines.faststream_redis_consume(
                url, stream, "bench", len(chunk), timeout, batch=batch
            )
        best = max(drains.values(), key=lambda d: d.rate)
        _add_drain(report, "bus", "faststream-redis", "consume+ack", best)
        for mode, drain in drains.items():
            report.add(
                "bus", "faststream-redis", mode, drain.rate, "msg/s", messages=drain.messages
            )

    step("redis: raw redis-py consume + ack")
    await _guarded(report, "bus", "redis-py", raw())
    step("redis: FastStream consume + ack")
    await _guarded(report, "bus", "faststream-redis", faststream())
    step("redis: baselines done")


async def _rabbit_baselines(
    config: BenchConfig, report: Report, services: Services, step: Step
) -> None:
    count, timeout = config.batched_messages, config.phase_timeout
    bodies = payloads(config.payload_size, count)

    async def raw() -> None:
        queue = f"bench.{services.run_id}.raw"
        services.forget_rabbit("queue", queue)
        await baselines.rabbit_fill(RABBIT_URL, queue, bodies)
        drain = await baselines.raw_rabbit_consume(RABBIT_URL, queue, count, timeout)
        _add_drain(report, "bus", "aio-pika", "consume+ack", drain)

    async def faststream() -> None:
        queue = f"bench.{services.run_id}.faststream"
        services.forget_rabbit("queue", queue)
        await baselines.rabbit_fill(RABBIT_URL, queue, bodies)
        drain = await baselines.faststream_rabbit_consume(RABBIT_URL, queue, count, timeout)
        _add_drain(report, "bus", "faststream-rabbit", "consume+ack", drain)

    step("rabbitmq: raw aio-pika consume + ack")
    await _guarded(report, "bus", "aio-pika", raw())
    step("rabbitmq: FastStream consume + ack")
    await _guarded(report, "bus", "faststream-rabbit", faststream())


IN_PROCESS = "publish+consume (in-process)"


async def _in_process(
    config: BenchConfig, report: Report, services: Services, backend: str
) -> None:
    """The backend's own script: publishers and a consumer in one process, vs the raw client."""
    size, rounds = config.payload_size, 1 if config.quick else 3
    if backend in ("memory", "sqlite"):
        from benchmarks import bus_inprocess

        result = await asyncio.to_thread(bus_inprocess.measure, backend, config.messages, size)
        rate = float(result["end_to_end_msgs_per_s"])
        report.add("bus", backend, IN_PROCESS, rate, "msg/s", **result)
        return
    if backend == "redis":
        from benchmarks import redis_vs_raw

        url, raw_key, subject = services.redis_url(), "raw_redis_py_msgs_per_s", "redis-py"
        result = await asyncio.to_thread(redis_vs_raw.measure, config.messages, size, url, rounds)
    else:
        from benchmarks import rabbitmq_vs_raw

        url, raw_key, subject = RABBIT_URL, "raw_aio_pika_msgs_per_s", "aio-pika"
        result = await asyncio.to_thread(
            rabbitmq_vs_raw.measure, config.messages, size, url, rounds
        )
    report.add("bus", backend, IN_PROCESS, float(result["omnibus_msgs_per_s"]), "msg/s", **result)
    report.add("bus", subject, IN_PROCESS, float(result[raw_key]), "msg/s", rounds=rounds)


async def _raw_end_to_end(
    config: BenchConfig, report: Report, services: Services, backend: str
) -> None:
    bodies = payloads(config.payload_size, config.batched_messages)
    name = f"bench.{services.run_id}.e2e-raw"
    if backend == "rabbitmq":
        services.forget_rabbit("queue", name)
        url, subject, variant = RABBIT_URL, "aio-pika", "confirms"
    else:
        url, subject, variant = services.redis_url(), "redis-py", "pipelined"
    drain = await asyncio.to_thread(
        baselines.end_to_end, backend, url, name, bodies, config.phase_timeout
    )
    _add_drain(report, "e2e", subject, variant, drain)


# -- scenarios 1, 2, 3, 5 through sidecar processes ---------------------------------------------


async def _http_phases(
    config: BenchConfig, report: Report, services: Services, run_id: str, step: Step
) -> None:
    wanted = [s for s in HTTP_SCENARIOS if config.wants(s)]
    backends = [b for b in config.backends if b in services.targets]
    state = config.wants("state") and any(store in STORES for store in config.stores)
    invoke = config.wants("invoke") and any(b != "memory" for b in backends)
    soak = config.wants("soak") and any(b != "memory" for b in backends)
    if not (wanted or state or invoke or soak) or not backends:
        return
    if "memory" in backends:
        for scenario in wanted:
            report.skip(scenario, "memory", "two sidecar processes cannot share an in-process bus")
        backends.remove("memory")
    if importlib.util.find_spec("runtime.sidecar") is None:
        for backend in backends:
            for scenario in wanted + ["state"] * state + ["invoke"] * invoke + ["soak"] * soak:
                report.skip(scenario, backend, "runtime.sidecar is not installed")
        return
    if not backends:
        return
    with LoadGenerator(config.generators) as generator, Children(services.workdir) as children:
        run = HttpRun(config, report, generator, children, services, run_id, services.workdir, step)
        if config.wants("ingest"):
            await _guarded(report, "ingest", "starlette", measure_ceiling(run))
        for backend in backends if wanted else ():
            scenario = wanted[0] if len(wanted) == 1 else "+".join(wanted)
            await _guarded(
                report, scenario, backend, measure_backend(run, services.targets[backend])
            )
        await _own_sidecar_phases(run, state=state, invoke=invoke, soak=soak)


async def _own_sidecar_phases(run: HttpRun, *, state: bool, invoke: bool, soak: bool) -> None:
    """The scenarios that start sidecars of their own: state, invoke, soak."""
    if state:
        await measure_state(run, _guarded)
    if invoke:
        await measure_invoke(run, _guarded)
    if soak:
        await measure_soak(run, _guarded)


def generator_check(measurements: Sequence[Measurement], config: dict[str, Any]) -> dict[str, Any]:
    """Is the generator the bottleneck? Its rate on the bare endpoint and its own CPU use."""
    by_key = {m.key: m for m in measurements}
    ceiling = by_key.get(("ingest", "starlette", "single"))
    ours = [
        m
        for m in measurements
        if m.scenario in ("ingest", "e2e") and not m.is_baseline and m.variant == "single"
    ]
    if ceiling is None or not ours:
        summary = "generator check: needs the bare-Starlette ingest phase and a sidecar phase"
        return {"summary": summary, "ok": None}
    best = max(ours, key=lambda m: m.value)
    processes = int(config["generators"])
    # Busiest generator share over the sidecar phases: a process near 1 core would be the limit.
    loads = [m.details.get("generator_cores", 0.0) for m in ours] + [
        ceiling.details.get("generator_cores", 0.0)
    ]
    per_process = max(loads) / processes
    ok = ceiling.value > best.value or per_process < GENERATOR_SATURATED
    summary = (
        f"generator check: the same generator ({processes} processes, "
        f"{config['connections']} keep-alive connections) sent {ceiling.value:,.0f} msg/s to the "
        f"bare Starlette endpoint, {ceiling.value / best.value:.1f}x the best sidecar figure "
        f"({best.subject} {best.scenario}: {best.value:,.0f} msg/s); its processes used at most "
        f"{per_process:.2f} core each (saturated would be ~1), "
        + ("so it is not what limits the sidecar figures." if ok else "so it MAY be the limit.")
    )
    return {"summary": summary, "ok": ok, "ceiling": ceiling.value, "best": best.value}
