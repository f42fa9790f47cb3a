"""Scenario ``state``: save and get over HTTP through a sidecar, beside the raw client.

Per store of ``--stores`` (``state.sqlite`` in the run's work directory, ``state.redis`` on the
private redis-server, so only with the redis backend, ``state.postgresql`` on the server at
``--postgres``, in tables named for the run that it drops at the end): one sidecar process (no
app) loads it as component ``statestore``, and keys ``k0`` .. ``k99`` are saved through it
first.  A store whose server is not there is reported skipped, with the reason.  Then, with the
run's generator:

- throughput: 32 requests in flight for half of ``--duration``; save = ``POST
  /v1.0/state/statestore`` of ``[{"key": "k<n>", "value": <the payload>}]``, get = ``GET
  /v1.0/state/statestore/k<n>``;
- latency: ``--rate`` ops/s (default 1,000, open loop) for half of the latency duration;
  p50/p99 of the generator's round trips.

Baselines in the same run, in this process, doing the same operation on a store of the same
layout (no HTTP), driven the same two ways (32 in flight, then the fixed rate):

- redis-py: the save script of ``state.redis`` (EVALSHA) and its get (HGETALL + PEXPIRETIME in
  one pipeline);
- sqlite3: the store's INSERT OR REPLACE and SELECT on Dapr's table layout (WAL, autocommit),
  each on one worker thread, as the store runs them;
- asyncpg: the store's own upsert and SELECT statements (``state.postgresql``), on a pool of as
  many connections as the store's (``maxConns``' default), on tables of the same layout.

The HTTP ceiling of each store's throughput goal is measured beside it, in the same rounds: the
bare Starlette endpoint of the ingest scenario runs beside the store's sidecar, and each of
``ROUNDS`` rounds sends single publishes to it, then saves, then gets through the sidecar, 32 in
flight for a throughput phase each (``starlette`` / ``ceiling beside <store> (32 in flight)``).
Each figure is its rounds pooled: operations over seconds, with every round's own rate in its
details.  On a shared host the speed of the machine drifts within seconds; a ceiling taken once,
even just before, gave the same code ratios from 0.34x to 1.10x.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from itertools import count
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from benchmarks.backends import PUBSUB_NAME
from benchmarks.http_phases import PUBLISH, HttpRun, percentiles
from benchmarks.loadgen import LoadResult
from benchmarks.payload import PayloadFactory
from benchmarks.report import Report
from benchmarks.services import Target
from state._postgres_schema import connect_arguments, drop_tables, migrate
from state._redis_scripts import SET as REDIS_SAVE  # the very script the store runs
from state.postgresql import PostgresSettings, create_pool, select_statement, upsert_statement

STORES = {"sqlite": "state.sqlite", "redis": "state.redis", "postgresql": "state.postgresql"}
RAW = {"sqlite": "sqlite3", "redis": "redis-py", "postgresql": "asyncpg"}
STORE = "statestore"
KEYS = 100
IN_FLIGHT = 32
OPS = ("save", "get")
ROUNDS = 3  # throughput rounds per store: the ceiling, then each operation through the sidecar
SAVE_PATH = f"/v1.0/state/{STORE}"
GET_PATH = f"/v1.0/state/{STORE}/{{key}}"

Op = Callable[[str], Awaitable[None]]
Guard = Callable[[Report, str, str, Awaitable[None]], Awaitable[None]]


def throughput_variant(op: str) -> str:
    """``save ops/s (32 in flight)``."""
    return f"{op} ops/s ({IN_FLIGHT} in flight)"


def ceiling_variant(backend: str) -> str:
    """``ceiling beside sqlite (32 in flight)``: the HTTP ceiling of ``backend``'s phases."""
    return f"ceiling beside {backend} ({IN_FLIGHT} in flight)"


def state_steps(stores: tuple[str, ...]) -> int:
    """Progress steps of the scenario: per store, its start, its rounds, its fixed-rate phases
    and the raw client's operations."""
    return sum(1 + ROUNDS + 2 * len(OPS) for store in stores if store in STORES)


async def measure_state(run: HttpRun, guard: Guard) -> None:
    """Every store of ``--stores`` through a sidecar, then its raw client."""
    value = PayloadFactory(run.config.payload_size).message(0, time.monotonic_ns()).decode()
    for store in run.config.stores:
        missing = await _missing(run, store)
        if missing:
            run.report.skip("state", store, missing)
            continue
        if store == "postgresql":
            await _on_postgres(run, guard, value)
            continue
        await guard(run.report, "state", store, _through_sidecar(run, store, value))
        if store == "redis":
            raw = _raw_redis(run.services.redis_url(), value, run.run_id)
        else:
            raw = _raw_sqlite(run.home / "raw-state.db", value)
        await guard(run.report, "state", RAW[store], _raw(run, RAW[store], raw, value))


async def _missing(run: HttpRun, store: str) -> str:
    """Why ``store`` cannot be measured in this run ("" if it can)."""
    if not run.services.targets:
        return "no backend of the run started, so no sidecar can"
    if store == "redis" and run.services.redis is None:
        return "state.redis runs on the run's private redis-server: add redis to --backends"
    if store == "postgresql":
        try:
            conn = await asyncpg.connect(**connect_arguments(run.config.postgres), timeout=5)
        except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
            return f"PostgreSQL at {run.config.postgres} is not reachable: {exc}"
        await conn.close()
    return ""


async def _on_postgres(run: HttpRun, guard: Guard, value: str) -> None:
    """The sidecar on tables of the run's own, then asyncpg on others; all dropped after."""
    tables = [_postgres_tables(run.run_id, "sidecar"), _postgres_tables(run.run_id, "raw")]
    try:
        await guard(run.report, "state", "postgresql", _through_sidecar(run, "postgresql", value))
        raw = _raw_postgres(run.config.postgres, value, tables[1])
        await guard(
            run.report, "state", RAW["postgresql"], _raw(run, RAW["postgresql"], raw, value)
        )
    finally:
        conn = await asyncpg.connect(**connect_arguments(run.config.postgres), timeout=5)
        try:
            for prefix in tables:
                await drop_tables(conn, f"{prefix}state", f"{prefix}metadata")
        finally:
            await conn.close()


def _postgres_tables(run_id: str, user: str) -> str:
    """The table prefix of ``user`` (the sidecar or the raw client) in this run."""
    return f"omnibus_bench_{run_id.replace('-', '_')}_{user}_"


def _durations(run: HttpRun) -> tuple[float, float]:
    """(throughput, latency) seconds of each phase: half the run's, to keep the scenario short."""
    return max(run.config.ingest_duration / 2, 0.5), max(run.config.latency_duration / 2, 1.0)


# -- through the sidecar ----------------------------------------------------------------------


def store_yaml(backend: str, run: HttpRun) -> str:
    """The ``statestore`` component of ``backend`` for this run."""
    if backend == "redis":
        port = run.services.redis.port if run.services.redis is not None else 6379
        metadata = {"redisHost": f"127.0.0.1:{port}", "redisPassword": ""}
    elif backend == "postgresql":
        prefix = _postgres_tables(run.run_id, "sidecar")
        metadata = {"connectionString": run.config.postgres, "tablePrefix": prefix,
                    "metadataTableName": f"{prefix}metadata", "cleanupInterval": "0"}  # fmt: skip
    else:
        metadata = {"connectionString": str(run.home / "state.db")}
    lines = ["apiVersion: dapr.io/v1alpha1", "kind: Component", "metadata:", f"  name: {STORE}"]
    lines += ["spec:", f"  type: {STORES[backend]}", "  version: v1", "  metadata:"]
    for key, text in metadata.items():
        lines += [f"  - name: {key}", f"    value: {json.dumps(text)}"]
    return "\n".join(lines) + "\n"


async def _through_sidecar(run: HttpRun, backend: str, value: str) -> None:
    # The sidecar's pubsub is the store's own backend, else the run's first (PostgreSQL).
    targets = run.services.targets
    target: Target = targets.get(backend) or targets.get("sqlite") or next(iter(targets.values()))
    run.step(f"{backend}: state store sidecar, and the bare Starlette endpoint beside it")
    app_id = f"bench-state-{run.run_id}"
    components = {STORE: store_yaml(backend, run)}
    with contextlib.ExitStack() as children:
        sidecar = run.children.sidecar(app_id, target, home=run.home, components=components)
        children.callback(run.children.stop, sidecar)
        ceiling = run.children.ceiling()
        children.callback(run.children.stop, ceiling)
        items = [{"key": f"k{n}", "value": json.loads(value)} for n in range(KEYS)]
        await asyncio.to_thread(_post, sidecar.url(SAVE_PATH), json.dumps(items).encode())
        save_body = '[{"key":"{key}","value":' + value + "}]"
        throughput, latency = _durations(run)
        paths = {"save": SAVE_PATH, "get": GET_PATH}
        shapes: dict[str, dict[str, Any]] = {
            "save": {"method": "POST", "body": save_body, "keys": KEYS},
            "get": {"method": "GET", "body": None, "keys": KEYS},
        }
        ceiling_url = ceiling.url(PUBLISH.format(pubsub=PUBSUB_NAME, topic="ceiling"))
        phases = {"ceiling": run.load(ceiling_url, duration=throughput)}
        for op in OPS:
            phases[op] = run.load(sidecar.url(paths[op]), duration=throughput, **shapes[op])
        rounds: dict[str, list[LoadResult]] = {name: [] for name in phases}
        for number in range(1, ROUNDS + 1):
            run.step(f"{backend}: round {number} of {ROUNDS}: ceiling, save, get")
            for name, spec in phases.items():
                load = await run.generator.run(replace(spec, connections=IN_FLIGHT))
                rounds[name].append(load)
        _record_rate(run.report, "starlette", ceiling_variant(backend), rounds["ceiling"])
        for op in OPS:
            _record_rate(run.report, backend, throughput_variant(op), rounds[op])
            run.step(f"{backend}: state {op} at {run.config.rate:g} ops/s")
            paced = replace(phases[op], duration=latency, rate=run.config.rate,
                            record_round_trips=True)  # fmt: skip
            load = await run.generator.run(paced)
            times = sorted(load.round_trips_us)
            _record_times(run.report, backend, op, times, load.errors, load.rate)


def _post(url: str, body: bytes) -> None:
    request = urllib.request.Request(url, data=body, method="POST")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=30) as response:
        if not 200 <= response.status < 300:
            raise RuntimeError(f"saving the keys answered {response.status}")


def _record_rate(report: Report, subject: str, variant: str, loads: list[LoadResult]) -> None:
    """One figure of ``loads``, its rounds pooled: every operation over every round's seconds."""
    seconds = sum(load.elapsed for load in loads)
    report.add(
        "state",
        subject,
        variant,
        sum(load.messages for load in loads) / seconds,
        "ops/s",
        requests=sum(load.requests for load in loads),
        errors=sum(load.errors for load in loads),
        first_error=next((load.first_error for load in loads if load.first_error), ""),
        seconds=round(seconds, 3),
        generator_cores=round(sum(load.cpu_seconds for load in loads) / seconds, 3),
        round_rates=[round(load.rate, 1) for load in loads],
    )


def _record_times(
    report: Report, subject: str, op: str, latencies_us: list[int], errors: int, rate: float
) -> None:
    if not latencies_us:
        raise RuntimeError(f"{op}: no operation succeeded at the fixed rate")
    marks = percentiles(latencies_us)
    for name in ("p50", "p99"):
        report.add("state", subject, f"{op} {name}", marks[name] / 1000, "ms",
                   operations=len(latencies_us), errors=errors,
                   achieved_rate=round(rate, 1))  # fmt: skip


# -- raw clients ------------------------------------------------------------------------------


async def _raw(
    run: HttpRun,
    subject: str,
    client: contextlib.AbstractAsyncContextManager[dict[str, Op]],
    value: str,
) -> None:
    throughput, latency = _durations(run)
    async with client as ops:
        for n in range(KEYS):
            await ops["save"](f"k{n}")
        for op in OPS:
            run.step(f"{subject}: {op}")
            loop = await _drive(ops[op], IN_FLIGHT, throughput)
            run.report.add("state", subject, throughput_variant(op), loop.done / loop.elapsed,
                           "ops/s", operations=loop.done, errors=loop.failed,
                           first_error=loop.first_error)  # fmt: skip
            paced = await _drive(ops[op], run.config.connections, latency, run.config.rate)
            achieved = paced.done / paced.elapsed
            _record_times(run.report, subject, op, paced.times_us, paced.failed, achieved)


@dataclass(slots=True)
class _Tally:
    done: int = 0
    failed: int = 0
    first_error: str = ""
    times_us: list[int] = field(default_factory=list)
    elapsed: float = 0.0

    def fail(self, exc: Exception) -> None:
        self.failed += 1
        self.first_error = self.first_error or f"{type(exc).__name__}: {exc}"


async def _drive(op: Op, workers: int, duration: float, rate: float | None = None) -> _Tally:
    """``workers`` loops of operations for ``duration`` seconds, as the HTTP generator runs.

    Without ``rate`` each worker starts its next operation when the last one ends (closed loop);
    with it, operation ``i`` is due at ``i / rate`` and starts then or, if the worker is late, at
    once, and its time runs from its actual start, as the generator's round trips do.
    """
    tally = _Tally()
    started = time.perf_counter()
    deadline = started + duration
    due = count() if rate is not None else None

    async def worker(offset: int) -> None:
        index = offset
        while (now := time.perf_counter()) < deadline:
            if due is not None and rate is not None:
                index = next(due)
                wait = started + index / rate - now
                if wait > 0:
                    await asyncio.sleep(wait)
            began = time.perf_counter_ns()
            try:
                await op(f"k{index % KEYS}")
            except Exception as exc:  # counted like a failed HTTP request
                tally.fail(exc)
            else:
                tally.done += 1
                tally.times_us.append((time.perf_counter_ns() - began) // 1000)
            index += workers

    await asyncio.gather(*(worker(i) for i in range(workers)))
    tally.elapsed = time.perf_counter() - started
    tally.times_us.sort()
    return tally


@contextlib.asynccontextmanager
async def _raw_redis(url: str, value: str, run_id: str) -> AsyncIterator[dict[str, Op]]:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    script = client.register_script(REDIS_SAVE.source)
    prefix = f"bench-raw-{run_id}||"

    async def save(key: str) -> None:
        await script(keys=[prefix + key], args=["", value, "0", 0])

    async def get(key: str) -> None:
        pipe = client.pipeline(transaction=False)
        pipe.hgetall(prefix + key)
        pipe.pexpiretime(prefix + key)
        await pipe.execute()

    try:
        yield {"save": save, "get": get}
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def _raw_postgres(url: str, value: str, prefix: str) -> AsyncIterator[dict[str, Op]]:
    settings = PostgresSettings(connection_string=url)
    pool = await create_pool(settings, min_size=settings.max_connections)  # the store's pool
    table, data = f"{prefix}state", value.encode()
    save_sql, get_sql = upsert_statement(table), select_statement(table)
    try:
        async with pool.acquire() as conn:
            await migrate(conn, table, f"{prefix}metadata", prefix)

        async def save(key: str) -> None:
            await pool.execute(save_sql, key, data, uuid.uuid4())

        async def get(key: str) -> None:
            await pool.fetch(get_sql, [key])

        yield {"save": save, "get": get}
    finally:
        await pool.close()


_TABLE = """CREATE TABLE IF NOT EXISTS state (key TEXT NOT NULL PRIMARY KEY, value TEXT NOT NULL,
is_binary BOOLEAN NOT NULL, etag TEXT NOT NULL, expiration_time TIMESTAMP DEFAULT NULL,
update_time TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)"""
_SAVE = (
    "INSERT OR REPLACE INTO state (key, value, is_binary, etag, expiration_time, update_time) "
    "VALUES (?, ?, 0, ?, NULL, ?)"
)
_GET = (
    "SELECT key, value, is_binary, etag, expiration_time FROM state WHERE key IN (?) "
    "AND (expiration_time IS NULL OR expiration_time > ?)"
)


@contextlib.asynccontextmanager
async def _raw_sqlite(path: Path, value: str) -> AsyncIterator[dict[str, Op]]:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=2.0)
    conn.execute("PRAGMA busy_timeout = 2000")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(_TABLE)
    worker = ThreadPoolExecutor(1, thread_name_prefix="raw-sqlite")
    loop = asyncio.get_running_loop()

    def now() -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())

    def save_now(key: str) -> None:
        conn.execute(_SAVE, (key, value, str(uuid.uuid4()), now()))

    def get_now(key: str) -> None:
        conn.execute(_GET, (key, now())).fetchall()

    async def save(key: str) -> None:
        await loop.run_in_executor(worker, save_now, key)

    async def get(key: str) -> None:
        await loop.run_in_executor(worker, get_now, key)

    try:
        yield {"save": save, "get": get}
    finally:
        worker.shutdown(wait=True)
        conn.close()
