"""BENCHMARKS.md, written from a run's JSON document: figures, machine, method, command."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.config import SCENARIO_TITLES
from benchmarks.goals import format_value

_MET = {True: "yes", False: "**no**", None: "-"}
BEFORE_AFTER = Path(__file__).resolve().parent / "before_after.md"

RUNNING = """\
## Running it

`omnibus bench` (or `python -m benchmarks`) runs every scenario on sqlite, redis and rabbitmq
(`--backends memory,...` adds the in-process bus to the bus-only scenarios);
`--quick` keeps the whole run short. `--backends redis,rabbitmq`, `--scenarios
ingest,e2e,latency,bus,cost,rpc,state,invoke`, `--size`, `--duration`, `--rate`, `--messages`
narrow it down;
`--repeat N` runs every phase N times and reports each figure's median (this VM's run-to-run
spread is wide: single runs a few minutes apart differed by up to 25% on the same figure);
`--profile` adds py-spy summaries of the sidecars (the sampler shares the two cores, so
the figures of a profiled run read low: publish them from a run without it);
`--render benchmarks/results/latest.json` redraws the table, plots and this file from a saved run.
A private `redis-server` is started on a free port; on RabbitMQ (127.0.0.1:5672) every queue and
exchange carries the run's id and is deleted at the end. Results:
`benchmarks/results/<timestamp>.json` and `latest.json`, plots beside.
"""

METHOD = """\
## How it is measured

All processes of a run share this machine's cores: the brokers, both sidecars, the subscriber app,
the load generator processes and the orchestrating process. Nothing is pinned to a core, so every
figure includes the cost of sharing them; ratios compare figures taken in the same run.

1. **Publish ingest over HTTP.** Generator processes (asyncio, keep-alive connections, the app
   channel's lean HTTP/1.1 client, about a third of aiohttp's CPU per request) send `POST
   /v1.0/publish/pubsub/{topic}` with a JSON payload from all connections at once, for a fixed
   duration; a response other than 2xx counts as an error. Bulk: `POST
   /v1.0-alpha1/publish/bulk/pubsub/{topic}` with 100 entries per request. The topic has a consumer
   group (so the broker stores every message) but no running subscriber. Ceiling: the same
   generator against a bare Starlette endpoint on uvicorn (uvloop + httptools) that reads the body
   and answers 204.
2. **End-to-end.** Generator -> publisher sidecar -> bus -> subscriber sidecar -> subscriber app
   (raw asyncio + httptools, answers `{"status":"SUCCESS"}` and counts distinct message ids). A
   fixed number of messages; throughput = messages delivered / (last delivery - first publish).
   Bulk: bulk publish of 100 plus `bulkSubscribe` (`maxMessagesCount` 100). Ceilings: raw redis-py
   (one process pipelining XADD in batches of 100, another reading XREADGROUP COUNT 100 and
   XACKing each batch) and raw aio-pika (persistent messages with publisher confirms, 200 in
   flight; a durable queue consumed with manual acks, prefetch 200, multiple-acks).
3. **Latency.** The generator publishes single messages at a fixed rate (open loop, spread over
   its processes and connections); each payload carries `time.monotonic_ns()` taken just before the
   HTTP request, and the app subtracts it from its own clock on receipt (one machine, one monotonic
   clock). Percentiles over every message of the phase.
4. **Bus only.** In one process, no HTTP: a topic is filled with the same payloads (published in
   batches of 100), then our broker consumes it through the delivery engine (100 handlers, fetches
   of 100, handler returns SUCCESS) until every message is acked. Baselines, each on its own
   prefilled stream or queue: raw redis-py (XREADGROUP COUNT 100 + one XACK per batch), raw
   aio-pika (manual acks, prefetch 200, multiple-acks), and FastStream (stream consumer group with
   acks, in its per-message mode on a fifth of the messages and in its batch mode of 100; the
   faster of the two is the baseline; a RabbitMQ queue with its default acks).
5. **Sidecar cost.** `/proc/<pid>/status` (VmRSS, VmHWM) and `/proc/<pid>/stat` (utime + stime) of
   both sidecar processes: RSS one second after both report healthy (nothing published yet), RSS
   and peak RSS after the fixed-rate phase, and CPU seconds spent from the start of the fixed-rate
   phase until its last message was delivered, per 1,000 messages (= cores per 1,000 msg/s).
6. **Request/reply, bus only.** In one process, no HTTP: an echo server (`broker.serve`, call
   mode, 100 handlers) and a caller (`broker.request`) on two broker objects, so the in-process
   shortcut is not taken; the request body is the payload and the reply is the same bytes.
   Calls/s with 1 and with 64 calls in flight, p50/p99 of one call at 1 in flight, after a
   warm-up of 20 calls. Baselines in the same run, also two clients each: raw redis-py (callers
   LPUSH onto a list; a server loop takes up to 100 per BLMPOP and PUBLISHes each reply, pipelined,
   to the caller's Pub/Sub channel), raw aio-pika (an RPC server on a queue; callers with direct
   reply-to and publisher confirms), and FastStream's `broker.request` (a list subscriber with
   64 workers; a queue subscriber). All subjects of a backend take turns in four slices of
   each phase, so a neighbour's load falls on all of them alike.
7. **State over HTTP.** One sidecar (no app) with the store as component `statestore`
   (`state.sqlite` in the run's directory, `state.redis` on the private redis-server,
   `state.postgresql` on the server at `--postgres` in tables of the run's own, dropped after;
   `--stores` picks them); keys
   k0..k99 saved first. Save (`POST /v1.0/state/statestore`, one item whose value is the
   payload) and get (`GET /v1.0/state/statestore/k<n>`): throughput with 32 requests in flight,
   then p50/p99 of the generator's round trips at the fixed rate (`--rate`, open loop), each
   phase half as long as the ingest and latency phases. Baselines in the same run, in the
   orchestrating process, the same two ways (32 in flight; the fixed rate over `--connections`
   workers): raw redis-py running `state.redis`'s own save script (EVALSHA) and its get
   (HGETALL + PEXPIRETIME, one pipeline), raw sqlite3 running the store's INSERT OR REPLACE
   and SELECT on Dapr's table layout (WAL, autocommit) on one worker thread, and raw asyncpg
   running `state.postgresql`'s own upsert and SELECT on the store's own pool, as large. The
   HTTP ceiling of
   the throughput goal is the bare Starlette endpoint of scenario 1, run beside each store's
   sidecar and measured in the same rounds (`starlette` / `ceiling beside <store>`): three rounds
   of the ceiling, then save, then get, 32 requests in flight for one throughput phase each; each
   figure pools its rounds (operations over seconds; every round's rate is in its details). The
   speed of a shared host drifts within seconds, so a ceiling taken once, even just before, said
   little about the phases after it.
8. **Service invocation.** The callee app is the bare Starlette endpoint (it answers 204); the
   generator POSTs the payload to it directly, then through a caller sidecar (no app) and a
   callee sidecar (`--app-port` = the app) on the run's pubsub as the system bus
   (`/v1.0/invoke/<callee>/method/<the app's path>`): calls/s with 32 requests in flight, and
   p50/p99 of the round trips at the fixed rate, each compared with the direct call. Async
   invocation (`Prefer: respond-async`): a fixed number of submissions with 32 in flight
   (submissions/s), then the caller's sidecar polled every 0.1 s until none is pending
   (completions/s from the first submission). Baseline on Redis: arq on the same redis-server
   (32 enqueuers; a worker running 32 jobs at once with 10 ms polls, each job POSTing the payload
   to the same app), until every result is fetched. arq is not in the bench extra (its
   `redis<6` pin conflicts with omnibus's redis): `pip install --no-deps arq` to measure it.
   Sync invocation is also held against FastStream's request/reply on the same broker, as the
   run's request/reply scenario measured it (bus only, 64 calls in flight against the
   invocation's 32, its p50 of one call at a time against the invocation's at the fixed rate).

`--profile` runs py-spy on the sidecars during the ingest, end-to-end and fixed-rate phases
(collapsed stacks `profile-<backend>-<phase>-<role>.txt` in the results directory, summaries
below the figures). It is for finding where the time goes, not for the figures: the sampler takes
CPU from the same two cores.
"""


def write_markdown(document: dict[str, Any], path: Path) -> Path:
    """Write BENCHMARKS.md for ``document`` (a run's JSON) at ``path``."""
    parts = [
        "# omnibus benchmarks\n",
        f"Measured {document['started']} with:\n\n```\n{document['command']}\n```\n",
        _note(document["config"].get("note", "")),
        _repeats(int(document["config"].get("repeat", 1))),
        _machine(document["machine"]),
        _goals(document["figures"]),
        _figures(document["figures"]),
        _checks(document.get("checks", {})),
        _profiles(document.get("checks", {}).get("profiles", {})),
        _skipped(document.get("skipped", [])),
        _plots(document.get("plots", []), path.parent),
        _before_after(),
        RUNNING,
        METHOD,
    ]
    path.write_text("\n".join(part for part in parts if part))
    return path


def _machine(machine: dict[str, Any]) -> str:
    packages = ", ".join(f"{k} {v}" for k, v in machine.get("packages", {}).items() if v)
    brokers = ", ".join(f"{k} {v}" for k, v in machine.get("brokers", {}).items())
    return (
        "## Machine\n\n"
        f"- {machine.get('cores')} cores ({machine.get('cpu_model')}), "
        f"{machine.get('memory_gb')} GB memory, {machine.get('os')}\n"
        f"- {machine.get('python')}; {packages}\n"
        f"- brokers: {brokers or 'none reachable'}\n"
        f"- load average at start: {machine.get('load_average_at_start')}\n"
    )


def _before_after() -> str:
    """The hand-kept record of profile-driven changes (it outlives every regeneration)."""
    try:
        return BEFORE_AFTER.read_text()
    except OSError:
        return ""


def _repeats(repeat: int) -> str:
    if repeat <= 1:
        return ""
    return (
        f"Every phase ran {repeat} times; each figure is the median of its runs (all values are "
        "in the JSON, under `runs`). Every run measured omnibus and its baselines back to back, "
        "on brokers of its own (a new redis-server and SQLite file, its RabbitMQ names deleted "
        "after it).\n"
    )


def _note(note: str) -> str:
    return f"> {note}\n" if note else ""


def _goals(rows: Sequence[dict[str, Any]]) -> str:
    judged = [row for row in rows if row["goal"]]
    if not judged:
        return ""
    met = sum(1 for row in judged if row["met"])
    lines = [f"## Goals: {met} of {len(judged)} met\n"]
    for row in judged:
        title = SCENARIO_TITLES.get(row["scenario"], row["scenario"])
        value = format_value(row["value"], row["unit"])
        versus = ""
        if row["ratio"] is not None:
            versus = f" = {row['ratio']:.2f}x {row['baseline']}"
        elif row["baseline"]:
            versus = f" (baseline {row['baseline']} missing)"
        verdict = {True: "met", False: "**missed**", None: "not judged"}[row["met"]]
        lines.append(
            f"- {title}, {row['subject']} {row['variant']}: {value}{versus}; "
            f"goal {row['goal']}: {verdict}"
        )
    return "\n".join(lines) + "\n"


def _figures(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        "## Figures\n",
        "| scenario | subject | figure | value | baseline | ratio | goal | met |",
        "|---|---|---|---:|---|---:|---|:-:|",
    ]
    for row in rows:
        baseline = "-"
        if row["baseline"]:
            value = row["baseline_value"]
            shown = "missing" if value is None else format_value(value, row["unit"])
            baseline = f"{row['baseline']}: {shown}"
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.2f}x"
        lines.append(
            f"| {SCENARIO_TITLES.get(row['scenario'], row['scenario'])} | {row['subject']} "
            f"| {row['variant']} | {format_value(row['value'], row['unit'])} | {baseline} "
            f"| {ratio} | {row['goal'] or '-'} | {_MET[row['met']]} |"
        )
    return "\n".join(lines) + "\n"


def _checks(checks: dict[str, Any]) -> str:
    parts = []
    generator = checks.get("generator")
    if generator:
        parts.append(f"## Is the generator the bottleneck?\n\n{generator['summary']}\n")
    errors = checks.get("errors") or []
    if errors:
        lines = ["## Failed requests\n", "Figures count accepted messages only.\n"]
        lines += [f"- {error['summary']}" for error in errors]
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def _profiles(profiles: dict[str, dict[str, Any]]) -> str:
    if not profiles:
        return ""
    lines = [
        "## Where the sidecars spend their time (py-spy)\n",
        "Share of samples per frame: *self* = on top of the stack, *omnibus* = anywhere in it.\n",
    ]
    for backend, phases in profiles.items():
        if any("samples" in value or "error" in value for value in phases.values()):
            phases = {"e2e": phases}  # results written before ingest was profiled too
        for phase, roles in phases.items():
            for role, summary in roles.items():
                title = f"### {backend}, {PHASE_TITLES.get(phase, phase)}, {role} sidecar"
                lines.append(f"{title} ({summary.get('samples', 0)} samples)\n")
                if "error" in summary:
                    lines.append(f"py-spy failed: {summary['error']}\n")
                    continue
                lines.append("| self | % | omnibus (inclusive) | % |\n|---|---:|---|---:|")
                own, ours = summary["self"], summary["inclusive"]
                for index in range(max(len(own), len(ours))):
                    left = own[index] if index < len(own) else ["", ""]
                    right = ours[index] if index < len(ours) else ["", ""]
                    lines.append(f"| `{left[0]}` | {left[1]} | `{right[0]}` | {right[1]} |")
                lines.append("")
    return "\n".join(lines) + "\n"


PHASE_TITLES = {"ingest": "publish ingest", "e2e": "end-to-end", "fixed-rate": "fixed rate"}


def _skipped(skipped: Sequence[dict[str, Any]]) -> str:
    if not skipped:
        return ""
    lines = ["## Skipped\n"]
    for skip in skipped:
        title = SCENARIO_TITLES.get(skip["scenario"], skip["scenario"])
        lines.append(f"- {title}, {skip['subject']}: {skip['reason']}")
    return "\n".join(lines) + "\n"


def _plots(plots: Sequence[str], base: Path) -> str:
    if not plots:
        return ""
    lines = ["## Plots\n"]
    for plot in plots:
        relative = os.path.relpath(Path(plot).resolve(), base.resolve())
        lines.append(f"![{Path(plot).stem}]({relative})")
    return "\n\n".join(lines) + "\n"
