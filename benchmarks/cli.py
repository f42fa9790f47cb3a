"""``omnibus bench`` (and ``python -m benchmarks``): the command line of the harness."""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
from pathlib import Path

from rich.console import Console

from benchmarks.config import (
    BACKENDS,
    EXTRA_BACKENDS,
    OPT_IN_SCENARIOS,
    POSTGRES_URL,
    RESULTS_DIR,
    SCENARIOS,
    STATE_STORES,
    BenchConfig,
    quick_defaults,
    split_names,
)
from bus.errors import InvalidArgument

MARKDOWN = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``omnibus bench``."""
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small counts and short phases (a few minutes for every scenario)",
    )
    parser.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        help=f"comma-separated, of {','.join(BACKENDS + EXTRA_BACKENDS)} (default: %(default)s)",
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated, of %(default)s; also {','.join(OPT_IN_SCENARIOS)}, only when named",
    )
    parser.add_argument(
        "--stores",
        default=",".join(STATE_STORES),
        help="the state scenario's stores, comma-separated, of %(default)s (redis needs the "
        "redis backend)",
    )
    parser.add_argument(
        "--postgres",
        default=POSTGRES_URL,
        help="the PostgreSQL of state.postgresql (default: %(default)s); the run creates "
        "tables of its own there and drops them at the end",
    )
    parser.add_argument(
        "--soak-duration", type=float, help="seconds of the soak stream (default 600; --quick: 20)"
    )
    parser.add_argument(
        "--soak-rate", type=float, default=1000.0, help="msg/s of the soak stream (default 1000)"
    )
    parser.add_argument("--size", type=int, default=1024, help="payload bytes (default 1024)")
    parser.add_argument(
        "--duration", type=float, help="seconds of each timed phase (ingest and fixed-rate)"
    )
    parser.add_argument("--rate", type=float, default=1000.0, help="msg/s of the latency phase")
    parser.add_argument("--messages", type=int, help="messages of the count-based phases")
    parser.add_argument("--connections", type=int, default=16, help="HTTP connections in total")
    parser.add_argument("--generators", type=int, default=2, help="load generator processes")
    parser.add_argument(
        "--output", type=Path, default=RESULTS_DIR, help="directory of JSON results and plots"
    )
    parser.add_argument(
        "--markdown", type=Path, default=MARKDOWN, help="the Markdown report to (re)write"
    )
    parser.add_argument("--no-markdown", action="store_true", help="do not write the report")
    parser.add_argument("--no-plots", action="store_true", help="do not draw PNG plots")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the sidecars during the HTTP phases (to find where time goes: the sampler "
        "shares the cores, so the figures of a profiled run read low)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run every phase N times and report each figure's median (every run measures "
        "omnibus and its baselines back to back, so each ratio has both sides of one moment)",
    )
    parser.add_argument(
        "--render",
        type=Path,
        metavar="JSON",
        help="measure nothing: redraw the table, plots and Markdown of a saved results file",
    )
    parser.add_argument("--note", default="", help="a remark for the top of the Markdown report")


def config_from_args(args: argparse.Namespace, command: str = "") -> BenchConfig:
    """The run configuration of parsed ``args`` (InvalidArgument on bad values)."""
    values: dict[str, object] = dict(quick_defaults()) if args.quick else {}
    if args.messages is not None:
        values["messages"] = args.messages
    if args.duration is not None:
        values["ingest_duration"] = values["latency_duration"] = args.duration
    if args.soak_duration is not None:
        values["soak_duration"] = args.soak_duration
    return BenchConfig(
        backends=split_names(args.backends, BACKENDS + EXTRA_BACKENDS, "--backends"),
        scenarios=split_names(args.scenarios, SCENARIOS + OPT_IN_SCENARIOS, "--scenarios"),
        stores=split_names(args.stores, STATE_STORES, "--stores"),
        postgres=args.postgres,
        soak_rate=args.soak_rate,
        payload_size=args.size,
        rate=args.rate,
        connections=args.connections,
        generators=args.generators,
        output=args.output,
        plots=not args.no_plots,
        markdown=None if args.no_markdown else args.markdown,
        quick=args.quick,
        command=command,
        note=args.note,
        profile=args.profile,
        repeat=args.repeat,
        **values,  # type: ignore[arg-type]
    )


def main(args: argparse.Namespace) -> int:
    """Run the benchmark; 0 when it produced a report, 2 on bad options."""
    console = Console(stderr=True)
    if not console.is_terminal:
        console = Console(stderr=True, width=140)  # logs and CI: keep the table readable
    try:
        config = config_from_args(args, command=_command_line())
    except InvalidArgument as exc:
        console.print(f"[red]omnibus bench: {exc}[/red]")
        return 2
    if args.render is not None:
        from benchmarks.runner import render_saved

        render_saved(args.render, config, console)
        return 0
    from benchmarks.runner import run_bench  # heavy imports only once the options are valid

    document = asyncio.run(run_bench(config, console))
    return 0 if document["measurements"] else 1


def _command_line() -> str:
    program = Path(sys.argv[0]).name
    if program == "__main__.py":
        program = "python -m benchmarks"
    elif program == "omnibus" and sys.argv[1:2] != ["bench"]:
        program = "omnibus bench"
    return " ".join([program, shlex.join(sys.argv[1:])]).strip()


def entry() -> int:
    """``python -m benchmarks``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    add_arguments(parser)
    return main(parser.parse_args())
