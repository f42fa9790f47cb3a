"""The benchmark harness: a tiny quick run on SQLite writes a well-formed report (not speed)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import pytest
from rich.console import Console

from benchmarks.cli import add_arguments, config_from_args
from benchmarks.config import BenchConfig
from benchmarks.goals import figure_rows
from benchmarks.http_phases import percentiles
from benchmarks.payload import PayloadFactory, stamp_of
from benchmarks.profiling import summarise
from benchmarks.report import Measurement, Report, combine
from benchmarks.runner import render_saved, request_errors, run_bench
from benchmarks.soak import Sample, growth, is_flat
from bus.errors import InvalidArgument
from tests.backends import missing_service
from tests.helpers import postgres_listens


def test_quick_options_and_bad_names() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    config = config_from_args(parser.parse_args(["--quick", "--backends", "sqlite,redis"]))
    assert config.quick and config.backends == ("sqlite", "redis")
    assert config.messages < BenchConfig().messages
    assert config.latency_duration < BenchConfig().latency_duration
    with pytest.raises(InvalidArgument, match="--backends"):
        config_from_args(parser.parse_args(["--backends", "kafka"]))


def test_payload_carries_its_stamp_at_the_requested_size() -> None:
    factory = PayloadFactory(1024)
    body = factory.message(7, 123456789)
    assert 1024 - 32 <= len(body) <= 1024  # the pad leaves room for the widest stamp
    assert stamp_of(body) == (123456789, 7)
    bulk = json.loads(factory.bulk(10, 3, 5))
    assert [entry["entryId"] for entry in bulk] == ["10", "11", "12"]
    assert stamp_of({"data": bulk[2]["event"]}) == (5, 12)


def test_profile_summary_of_collapsed_stacks() -> None:
    collapsed = "\n".join(
        [
            "main (/x/runtime/sidecar.py:9);publish (/x/runtime/api/app.py:3);dumps (json.py:1) 3",
            "main (/x/runtime/sidecar.py:9);fetch (/x/bus/redis.py:7) 1",
        ]
    )
    summary = summarise(collapsed)
    assert summary["samples"] == 4
    assert summary["self"][0] == ["dumps (json.py)", 75.0]
    assert summary["inclusive"] == [
        ["publish (runtime/api/app.py)", 75.0],
        ["fetch (bus/redis.py)", 25.0],
    ]


def test_failed_requests_are_reported() -> None:
    failed = Measurement(
        "ingest", "redis", "single", 9.0, "msg/s", {"errors": 3, "first_error": "HTTP 500"}
    )
    clean = Measurement("ingest", "redis", "bulk", 9.0, "msg/s", {"errors": 0})
    errors = request_errors([failed, clean])
    assert [e["key"] for e in errors] == [["ingest", "redis", "single"]]
    assert "3 failed requests (HTTP 500)" in errors[0]["summary"]


def test_percentiles_and_goal_rows() -> None:
    values = sorted(range(1, 1001))
    assert percentiles(values) == {"p50": 500.0, "p90": 900.0, "p99": 990.0, "max": 1000.0}
    measurements = [
        Measurement("ingest", "starlette", "single", 10_000, "msg/s"),
        Measurement("ingest", "sqlite", "single", 7_000, "msg/s"),
        Measurement("latency", "sqlite", "p99", 6.0, "ms"),
    ]
    rows = {(r["subject"], r["variant"]): r for r in figure_rows(measurements)}
    assert rows[("sqlite", "single")]["ratio"] == pytest.approx(0.7)
    assert rows[("sqlite", "single")]["met"] is True
    assert rows[("sqlite", "p99")]["met"] is False
    assert rows[("starlette", "single")]["goal"] is None


def test_repeated_runs_report_each_figures_median() -> None:
    def run(single: float, ceiling: float, p99: float | None) -> Report:
        report = Report(config={"repeat": 3}, machine={}, command="omnibus bench --repeat 3")
        report.add("ingest", "starlette", "single", ceiling, "msg/s", generator_cores=0.5)
        report.add("ingest", "sqlite", "single", single, "msg/s", errors=0, mark=single)
        if p99 is not None:
            report.add("latency", "sqlite", "p99", p99, "ms")
        report.skip("bus", "redis", "broker unavailable: refused")
        return report

    merged = combine([run(4_000, 9_000, 7.0), run(6_000, 10_000, None), run(5_000, 8_000, 3.0)])
    ingest = merged.get("ingest", "sqlite", "single")
    assert ingest is not None and ingest.value == 5_000
    assert ingest.details["mark"] == 5_000  # the details of the median run
    assert ingest.details["runs"] == [4_000, 6_000, 5_000]
    p99 = merged.get("latency", "sqlite", "p99")
    assert p99 is not None and p99.value == 5.0 and p99.details["runs"] == [7.0, 3.0]
    assert len(merged.skipped) == 1  # the same skip of every run, once
    rows = {(r["subject"], r["variant"]): r for r in figure_rows(merged.measurements)}
    assert rows[("sqlite", "single")]["ratio"] == pytest.approx(5_000 / 9_000)
    single = run(1.0, 2.0, None)
    assert combine([single]) is single


def test_repeat_must_be_positive() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert config_from_args(parser.parse_args(["--repeat", "3"])).repeat == 3
    with pytest.raises(InvalidArgument, match="--repeat"):
        config_from_args(parser.parse_args(["--repeat", "0"]))


def test_request_reply_goals_compare_with_faststream_and_the_raw_client() -> None:
    measurements = [
        Measurement("rpc", "redis", "calls/s (64 in flight)", 800.0, "calls/s"),
        Measurement("rpc", "faststream-redis", "calls/s (64 in flight)", 400.0, "calls/s"),
        Measurement("rpc", "redis-py", "calls/s (64 in flight)", 1000.0, "calls/s"),
        Measurement("rpc", "redis", "p50", 1.5, "ms"),
        Measurement("rpc", "faststream-redis", "p50", 3.0, "ms"),
        Measurement("rpc", "redis-py", "p50", 1.0, "ms"),
    ]
    rows = {(r["variant"], r["baseline"]): r for r in figure_rows(measurements)}
    rate_peer = rows[("calls/s (64 in flight)", "faststream-redis/calls/s (64 in flight)")]
    rate_raw = rows[("calls/s (64 in flight)", "redis-py/calls/s (64 in flight)")]
    assert rate_peer["met"] is True and rate_raw["met"] is True  # 2x and 0.8x
    time_peer = rows[("p50", "faststream-redis/p50")]
    time_raw = rows[("p50", "redis-py/p50")]
    assert time_peer["met"] is True  # half FastStream's time
    assert time_raw["met"] is False and time_raw["goal"] == "<= 1.43x baseline"  # 1.5x raw


@pytest.mark.e2e
@pytest.mark.timeout(120)
async def test_request_reply_scenario_on_memory_and_sqlite(tmp_path: Path) -> None:
    # Given: the request/reply scenario alone, on the in-process bus and on SQLite
    config = BenchConfig(
        backends=("memory", "sqlite"),
        scenarios=("rpc",),
        ingest_duration=0.5,
        output=tmp_path / "results",
        plots=False,
        quick=True,
    )
    # When
    with (tmp_path / "console.txt").open("w") as out:
        document = await run_bench(config, Console(file=out, width=140))
    # Then: every figure of both backends, from calls that all succeeded
    assert document["skipped"] == []
    found = {(m["subject"], m["variant"]): m for m in document["measurements"]}
    for backend in ("memory", "sqlite"):
        for variant in ("calls/s (1 in flight)", "calls/s (64 in flight)", "p50", "p99"):
            measurement = found[(backend, variant)]
            assert measurement["scenario"] == "rpc" and measurement["value"] > 0
        one = found[(backend, "calls/s (1 in flight)")]["details"]
        assert one["calls"] > 0 and one["errors"] == 0
        assert found[(backend, "calls/s (64 in flight)")]["details"]["errors"] == 0
        assert found[(backend, "p50")]["value"] <= found[(backend, "p99")]["value"]
        # one call at a time: the mean call lasts at most 1/rate, and (Markov) the median at
        # most twice the mean
        rate = found[(backend, "calls/s (1 in flight)")]["value"]
        assert found[(backend, "p50")]["value"] <= 2 * 1000 / rate
    assert {m["scenario"] for m in document["measurements"]} == {"rpc"}


def test_state_goal_allows_a_fixed_time_over_the_raw_client() -> None:
    measurements = [
        Measurement("state", "redis", "get p50", 0.9, "ms"),
        Measurement("state", "redis-py", "get p50", 0.5, "ms"),
        Measurement("state", "redis", "save p50", 0.7, "ms"),
        Measurement("state", "redis-py", "save p50", 0.5, "ms"),
        Measurement("ingest", "starlette", "single", 3000.0, "msg/s"),  # not the state goal's
        Measurement("state", "starlette", "ceiling beside redis (32 in flight)", 1000.0, "ops/s"),
        Measurement("state", "redis", "get ops/s (32 in flight)", 600.0, "ops/s"),
    ]
    rows = {(r["variant"], r["baseline"]): r for r in figure_rows(measurements)}
    get = rows[("get p50", "redis-py/get p50")]
    assert get["met"] is False and get["goal"] == "<= baseline + 0.30 ms"  # +0.4 ms
    assert rows[("save p50", "redis-py/save p50")]["met"] is True  # +0.2 ms
    ceiling = "starlette/ceiling beside redis (32 in flight)"
    assert rows[("get ops/s (32 in flight)", ceiling)]["met"] is True  # 0.6x of the one beside


@pytest.mark.e2e
@pytest.mark.timeout(120)
async def test_state_scenario_on_sqlite(tmp_path: Path) -> None:
    # Given: the state scenario alone, on the embedded store, at a low fixed rate
    config = _state_only(tmp_path, "sqlite", rate=200)
    # When
    with (tmp_path / "console.txt").open("w") as out:
        document = await run_bench(config, Console(file=out, width=140))
    # Then: through the sidecar and raw, every figure, from operations that all succeeded
    assert document["skipped"] == []
    found = {(m["subject"], m["variant"]): m for m in document["measurements"]}
    # the ceiling, measured in the same rounds as the store's throughput phases, each figure
    # pooled over its rounds
    ceiling = found[("starlette", "ceiling beside sqlite (32 in flight)")]
    for figure in (ceiling, found[("sqlite", "save ops/s (32 in flight)")],
                   found[("sqlite", "get ops/s (32 in flight)")]):  # fmt: skip
        rounds = figure["details"]["round_rates"]
        assert len(rounds) == 3 and all(rate > 0 for rate in rounds)
        assert min(rounds) - 1 <= figure["value"] <= max(rounds) + 1  # rates rounded to 0.1
    for subject in ("sqlite", "sqlite3"):
        for op in ("save", "get"):
            rate = found[(subject, f"{op} ops/s (32 in flight)")]
            assert rate["scenario"] == "state" and rate["value"] > 0
            assert rate["details"]["errors"] == 0
            p50, p99 = found[(subject, f"{op} p50")], found[(subject, f"{op} p99")]
            assert 0 < p50["value"] <= p99["value"] and p50["details"]["errors"] == 0
            assert p50["details"]["operations"] > 0
    assert document["checks"]["errors"] == []


@pytest.mark.e2e
@pytest.mark.timeout(120)
async def test_state_scenario_on_postgresql_drops_its_tables(tmp_path: Path) -> None:
    # Given: PostgreSQL, and the state scenario on it alone
    if not postgres_listens():
        missing_service("PostgreSQL is not reachable on 127.0.0.1:5432")
    config = _state_only(tmp_path, "postgresql", rate=100)
    before = await _bench_tables(config.postgres)
    # When
    with (tmp_path / "console.txt").open("w") as out:
        document = await run_bench(config, Console(file=out, width=140))
    # Then: the sidecar and asyncpg, every figure from operations that all succeeded
    assert document["skipped"] == [] and document["checks"]["errors"] == []
    found = {(m["subject"], m["variant"]): m for m in document["measurements"]}
    for subject in ("postgresql", "asyncpg"):
        for op in ("save", "get"):
            rate = found[(subject, f"{op} ops/s (32 in flight)")]
            assert rate["value"] > 0 and rate["details"]["errors"] == 0
            assert found[(subject, f"{op} p50")]["details"]["operations"] > 0
    assert ("starlette", "ceiling beside postgresql (32 in flight)") in found
    # And: held to the ceiling beside it, and to asyncpg's p50
    rows = {(r["subject"], r["variant"], r["baseline"]): r for r in document["figures"]}
    rate = "save ops/s (32 in flight)"
    ceiling = "starlette/ceiling beside postgresql (32 in flight)"
    assert rows[("postgresql", rate, ceiling)]["goal"] == ">= 0.5x baseline"
    assert rows[("postgresql", "get p50", "asyncpg/get p50")]["goal"] == "<= baseline + 0.30 ms"
    # And: nothing of the run is left on the server
    assert await _bench_tables(config.postgres) == before


def test_stores_of_the_state_scenario_and_why_one_is_skipped() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert config_from_args(parser.parse_args([])).stores == ("sqlite", "redis", "postgresql")
    args = parser.parse_args(["--stores", "postgresql", "--postgres", "postgresql://x@h/db"])
    config = config_from_args(args)
    assert config.stores == ("postgresql",) and config.postgres == "postgresql://x@h/db"
    with pytest.raises(InvalidArgument, match="--stores"):
        config_from_args(parser.parse_args(["--stores", "mongodb"]))


@pytest.mark.timeout(60)
async def test_redis_state_needs_the_redis_backend(tmp_path: Path) -> None:
    # Given: the state scenario on state.redis, in a run without the redis backend
    config = _state_only(tmp_path, "redis", rate=100)
    # When
    with (tmp_path / "console.txt").open("w") as out:
        document = await run_bench(config, Console(file=out, width=140))
    # Then: skipped, and the report says what to add
    assert [(s["scenario"], s["subject"]) for s in document["skipped"]] == [("state", "redis")]
    assert "add redis to --backends" in document["skipped"][0]["reason"]
    assert not [m for m in document["measurements"] if m["scenario"] == "state"]


def _state_only(tmp_path: Path, store: str, *, rate: float) -> BenchConfig:
    """A short run of the state scenario alone, on ``store`` (the sidecar's bus on SQLite)."""
    return BenchConfig(
        backends=("sqlite",),
        scenarios=("state",),
        stores=(store,),
        ingest_duration=0.5,
        latency_duration=1.0,
        rate=rate,
        connections=4,
        generators=1,
        output=tmp_path / "results",
        plots=False,
        quick=True,
    )


async def _bench_tables(url: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE tablename LIKE 'omnibus_bench_%'"
        )
    finally:
        await conn.close()
    return sorted(row["tablename"] for row in rows)


def test_invocation_goals_allow_fixed_times_over_the_direct_call() -> None:
    measurements = [
        Measurement("invoke", "direct", "p50", 0.5, "ms"),
        Measurement("invoke", "direct", "p99", 1.0, "ms"),
        Measurement("invoke", "redis", "p50", 1.8, "ms"),
        Measurement("invoke", "redis", "p99", 6.0, "ms"),
        Measurement("invoke", "redis", "async completions/s", 900.0, "calls/s"),
        Measurement("invoke", "arq", "async completions/s", 1000.0, "calls/s"),
    ]
    rows = {(r["variant"], r["baseline"]): r for r in figure_rows(measurements)}
    assert rows[("p50", "direct/p50")]["met"] is True  # +1.3 ms of 1.5
    assert rows[("p99", "direct/p99")]["met"] is False  # +5 ms of 4
    completions = rows[("async completions/s", "arq/async completions/s")]
    assert completions["met"] is False and completions["ratio"] == pytest.approx(0.9)


@pytest.mark.e2e
@pytest.mark.timeout(120)
async def test_invoke_scenario_on_sqlite(tmp_path: Path) -> None:
    # Given: the invocation scenario alone, through two sidecars on the embedded bus
    config = BenchConfig(
        backends=("sqlite",),
        scenarios=("invoke",),
        messages=600,
        ingest_duration=0.5,
        latency_duration=1.0,
        rate=200,
        connections=4,
        generators=1,
        output=tmp_path / "results",
        plots=False,
        quick=True,
    )
    # When
    with (tmp_path / "console.txt").open("w") as out:
        document = await run_bench(config, Console(file=out, width=140))
    # Then: the direct call and the sidecars' figures, sync and async, without failed requests
    assert document["skipped"] == []
    found = {(m["subject"], m["variant"]): m for m in document["measurements"]}
    for subject in ("direct", "sqlite"):
        assert found[(subject, "calls/s (32 in flight)")]["value"] > 0
        p50, p99 = found[(subject, "p50")], found[(subject, "p99")]
        assert 0 < p50["value"] <= p99["value"] and p50["details"]["calls"] > 0
    submitted = found[("sqlite", "async submissions/s")]
    completed = found[("sqlite", "async completions/s")]
    assert submitted["details"]["requests"] == 200  # max(200, messages // 3)
    assert 0 < completed["value"] <= submitted["value"]  # completions follow submissions
    assert document["checks"]["errors"] == []


@pytest.mark.e2e
@pytest.mark.timeout(180)
async def test_quick_run_on_sqlite_writes_json_plots_and_markdown(tmp_path: Path) -> None:
    # Given: a tiny run of the pub/sub scenarios on the embedded backend, twice (request/reply
    # and state have tests of their own)
    config = BenchConfig(
        repeat=2,
        backends=("sqlite",),
        scenarios=("ingest", "e2e", "latency", "bus", "cost"),
        messages=200,
        ingest_duration=0.5,
        latency_duration=1.0,
        rate=200,
        connections=4,
        generators=1,
        output=tmp_path / "results",
        markdown=tmp_path / "BENCHMARKS.md",
        quick=True,
        command="omnibus bench --quick --backends sqlite",
    )
    # When
    with (tmp_path / "console.txt").open("w") as out:
        document = await run_bench(config, Console(file=out, width=140))
    # Then: every scenario produced figures, or says why not
    assert document["skipped"] == []
    assert {"schema", "started", "command", "config", "machine", "measurements", "figures"} <= set(
        document
    )
    keys = {(m["scenario"], m["subject"], m["variant"]) for m in document["measurements"]}
    for key in [
        ("ingest", "starlette", "single"),
        ("ingest", "sqlite", "single"),
        ("ingest", "sqlite", "bulk"),
        ("e2e", "sqlite", "single"),
        ("e2e", "sqlite", "bulk"),
        ("latency", "sqlite", "p50"),
        ("latency", "sqlite", "p99"),
        ("bus", "sqlite", "consume+ack"),
        ("cost", "sqlite", "rss idle (publisher)"),
        ("cost", "sqlite", "cpu per 1k msg/s (subscriber)"),
    ]:
        assert key in keys, key
    for measurement in document["measurements"]:
        assert isinstance(measurement["value"], float) and measurement["value"] > 0
        assert len(measurement["details"]["runs"]) == 2  # both runs measured every figure
    ingest = next(
        r
        for r in document["figures"]
        if r["variant"] == "single" and r["subject"] == "sqlite" and r["scenario"] == "ingest"
    )  # noqa: E501
    assert ingest["baseline"] == "starlette/single" and isinstance(ingest["ratio"], float)
    assert isinstance(ingest["met"], bool)
    assert document["machine"]["cores"] and document["machine"]["brokers"]["sqlite"]
    assert document["checks"]["generator"]["ok"] in (True, False)
    assert document["checks"]["errors"] == []
    # And: the files
    latest = json.loads((tmp_path / "results" / "latest.json").read_text())
    assert latest["measurements"] == document["measurements"]
    assert len(list((tmp_path / "results").glob("bench-*.json"))) == 1
    for plot in document["plots"]:
        assert Path(plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {Path(p).name for p in document["plots"]} == {"throughput.png", "latency.png"}
    markdown = (tmp_path / "BENCHMARKS.md").read_text()
    assert "omnibus bench --quick --backends sqlite" in markdown
    assert "## Machine" in markdown and "| publish ingest over HTTP | sqlite |" in markdown
    assert "each figure is the median of its runs" in markdown
    # And: a saved run renders again without measuring anything
    again = replace(config, markdown=tmp_path / "again.md")
    with (tmp_path / "console.txt").open("a") as out:
        render_saved(tmp_path / "results" / "latest.json", again, Console(file=out, width=140))
    assert (tmp_path / "again.md").read_text() == markdown


def test_soak_options_and_its_opt_in() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert "soak" not in config_from_args(parser.parse_args([])).scenarios
    quick = config_from_args(parser.parse_args(["--quick", "--scenarios", "soak"]))
    assert quick.scenarios == ("soak",) and quick.soak_duration == 20.0
    assert BenchConfig().soak_duration == 600.0 and BenchConfig().soak_rate == 1000.0
    argv = ["--scenarios", "soak", "--soak-duration", "30", "--soak-rate", "50"]
    chosen = config_from_args(parser.parse_args(argv))
    assert (chosen.soak_duration, chosen.soak_rate) == (30.0, 50.0)
    with pytest.raises(InvalidArgument, match="soak-rate"):
        config_from_args(parser.parse_args(["--soak-rate", "0"]))


def test_soak_growth_is_judged_after_the_warmup() -> None:
    # Given: RSS that doubles during the warm-up, then is flat; and one that keeps growing
    def series(rss: Callable[[int], float]) -> list[Sample]:
        return [Sample(at=float(t), rss=rss(t), fds=20, threads=4) for t in range(30)]

    warm_then_flat = series(lambda t: 50.0 if t < 5 else 100.0)
    leaking = series(lambda t: 100.0 + t)
    # Then: only growth after the warm-up counts, averaged over 5 s at either end
    baseline, final, grew = growth(warm_then_flat, "rss", warmup=5.0)
    assert (baseline, final, grew) == (100.0, 100.0, 0.0) and is_flat(baseline, final)
    baseline, final, grew = growth(leaking, "rss", warmup=5.0)
    assert (baseline, final) == (107.0, 127.0) and not is_flat(baseline, final)
    assert grew == pytest.approx(20 / 107)
    assert growth(leaking, "fds", warmup=5.0)[2] == 0.0


@pytest.mark.e2e
@pytest.mark.timeout(120)
async def test_soak_scenario_on_sqlite(tmp_path: Path) -> None:
    # Given: the soak scenario alone, a few seconds at a low rate through two sidecars
    config = BenchConfig(
        backends=("sqlite",),
        scenarios=("soak",),
        soak_duration=8.0,
        soak_rate=200,
        connections=4,
        generators=1,
        output=tmp_path / "results",
        quick=True,
    )
    # When
    with (tmp_path / "console.txt").open("w") as out:
        document = await run_bench(config, Console(file=out, width=140))
    # Then: every message delivered, six series sampled every second, judged and plotted
    assert document["skipped"] == []
    found = {m["variant"]: m for m in document["measurements"] if m["scenario"] == "soak"}
    delivered = found.pop("delivered")
    assert delivered["value"] == delivered["details"]["published"] > 0
    assert delivered["details"]["errors"] == 0
    assert sorted(found) == sorted(
        f"{name} growth ({role})"
        for name in ("rss", "fds", "threads")
        for role in ("publisher", "subscriber")
    )
    for measurement in found.values():
        assert measurement["unit"] == "%" and isinstance(measurement["details"]["flat"], bool)
        assert measurement["details"]["samples"] >= 8 and measurement["details"]["baseline"] > 0
    plot = Path(document["checks"]["soak_plots"]["sqlite"])
    assert plot.parent == tmp_path / "results" and plot.stat().st_size > 0


def test_sync_invocation_is_held_against_faststream_request_reply_on_redis() -> None:
    measurements = [
        Measurement("invoke", "redis", "calls/s (32 in flight)", 5000.0, "calls/s"),
        Measurement("invoke", "redis", "p50", 1.0, "ms"),
        Measurement("invoke", "rabbitmq", "p50", 2.0, "ms"),
        Measurement("rpc", "faststream-redis", "calls/s (64 in flight)", 700.0, "calls/s"),
        Measurement("rpc", "faststream-redis", "p50", 0.8, "ms"),
        Measurement("rpc", "faststream-rabbit", "p50", 1.5, "ms"),
    ]
    rows = {(r["subject"], r["variant"], r["baseline"]): r for r in figure_rows(measurements)}
    rate = rows[("redis", "calls/s (32 in flight)", "faststream-redis/calls/s (64 in flight)")]
    assert rate["met"] is True and rate["ratio"] == pytest.approx(5000 / 700)
    assert rows[("redis", "p50", "faststream-redis/p50")]["met"] is False  # 1.0 ms > 0.8 ms
    assert rows[("rabbitmq", "p50", "faststream-rabbit/p50")]["goal"] is None  # shown, not judged
