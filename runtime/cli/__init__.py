"""The ``omnibus`` command line: ``run``, ``init``, ``list``, ``publish``, ``dlq``, ``bench``,
``invocations``.

Each sub-command lives in a module of its own and is imported only when it runs, so that
``omnibus run`` starts without loading the broker clients.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from bus.errors import InvalidName, OmnibusError
from invoke import validate_own_app_id
from runtime.cli.commands import add_bench, add_dlq, add_init, add_list, add_publish
from runtime.cli.invocations import add_invocations
from runtime.cli.invoke import add_invoke
from runtime.cli.state import add_state

if TYPE_CHECKING:
    from runtime.cli.run import RunPlan

_LOG_LEVELS = ("debug", "info", "warning", "error")


def _add_run(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = commands.add_parser(
        "run",
        help="run an app with its sidecar",
        description=(
            "Start a sidecar (python -m runtime.sidecar) and then the app command, with APP_ID, "
            "DAPR_HTTP_PORT and (with --app-port) APP_PORT in the app's environment. Both outputs "
            "are streamed with the prefixes '== APP ==' and '== OMNIBUS =='. Ctrl-C or SIGTERM "
            "stops the app first, then the sidecar; the exit code is the app's. Without a "
            "command only the sidecar runs."
        ),
        epilog="example: omnibus run --app-id orders --app-port 0 -- python app.py",
    )
    run.add_argument(
        "--app-id",
        required=True,
        type=_app_id,
        metavar="ID",
        help="the app's id (consumer group, CE source)",
    )
    run.add_argument(
        "--app-port",
        type=_port,
        metavar="PORT",
        help="the port the app listens on; 0 picks a free one and passes it as APP_PORT; "
        "omitted: no app channel (the app can publish but not subscribe), as in Dapr",
    )
    run.add_argument(
        "--dapr-http-port",
        type=_port,
        metavar="PORT",
        help="the sidecar's HTTP port (default: a free one)",
    )
    run.add_argument(
        "--resources-path",
        action="append",
        type=Path,
        default=[],
        metavar="DIR",
        help="a directory of component files (repeatable); default $OMNIBUS_HOME/components "
        "(~/.omnibus/components), created with the embedded defaults on first use",
    )
    run.add_argument(
        "--app-max-concurrency", type=int, metavar="N", help="concurrent deliveries to the app"
    )
    run.add_argument(
        "--max-body-size", metavar="SIZE", help="request body limit of the sidecar, e.g. 4Mi"
    )
    run.add_argument("--log-level", choices=_LOG_LEVELS, help="the sidecar's log level")
    run.add_argument(
        "--dapr-graceful-shutdown-seconds",
        type=float,
        metavar="SECONDS",
        help="how long the sidecar lets deliveries in progress finish when it stops "
        "(the sidecar's default: 5)",
    )
    _add_health_flags(run)
    run.add_argument("--bus", metavar="PUBSUB", help="the pubsub that carries state and invocation")
    run.add_argument(
        "--invocation-store",
        metavar="STATESTORE",
        help="the state component that keeps async invocation results",
    )
    run.add_argument(
        "--invocation-results-ttl",
        metavar="DURATION",
        help="how long async invocation results are kept (the sidecar's default: 24h)",
    )
    run.add_argument(
        "--ready-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long to wait for the sidecar to be ready (default 30)",
    )
    run.add_argument(
        "command",
        nargs=argparse.REMAINDER,
        metavar="-- CMD ARGS",
        help="the app command and its arguments (optional)",
    )
    run.set_defaults(handler=_run)


_HEALTH_FLAGS = (
    ("--app-health-check-path", "PATH", "the path probed (default /healthz)"),
    ("--app-health-probe-interval", "SECONDS", "time between probes (default 5)"),
    ("--app-health-probe-timeout", "MS", "time a probe may take (default 500)"),
    ("--app-health-threshold", "N", "failed probes in a row that make the app unhealthy (3)"),
)


def _add_health_flags(run: argparse.ArgumentParser) -> None:
    health = run.add_argument_group("app health checks (daprd's flags, passed to the sidecar)")
    health.add_argument(
        "--enable-app-health-check",
        action="store_true",
        help="probe the app; while it is unhealthy no messages are pulled for it",
    )
    for flag, metavar, text in _HEALTH_FLAGS:
        health.add_argument(flag, metavar=metavar, help=text)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range: {port}")
    return port


def _app_id(text: str) -> str:
    try:
        return validate_own_app_id(text)
    except InvalidName as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    """The ``omnibus`` argument parser with every sub-command."""
    parser = argparse.ArgumentParser(
        prog="omnibus",
        description="omnibus: a Dapr-compatible sidecar on an at-least-once bus",
    )
    commands = parser.add_subparsers(dest="command_name", required=True, metavar="COMMAND")
    _add_run(commands)
    add_init(commands)
    add_list(commands)
    add_publish(commands)
    add_invoke(commands)
    add_state(commands)
    add_dlq(commands)
    add_invocations(commands)
    add_bench(commands)
    return parser


def run_plan(args: argparse.Namespace, environ: dict[str, str]) -> RunPlan:
    """What ``omnibus run`` will start: free ports picked, the sidecar's flags forwarded."""
    from runtime.cli.resources import resources_paths
    from runtime.cli.run import RunPlan, free_port

    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    http_port = args.dapr_http_port or free_port()
    app_port = free_port() if args.app_port == 0 else args.app_port
    sidecar = [sys.executable, "-m", "runtime.sidecar", "--app-id", args.app_id]
    sidecar += ["--dapr-http-port", str(http_port)]
    if app_port is not None:
        sidecar += ["--app-port", str(app_port)]
    for path in resources_paths(args.resources_path, environ):
        sidecar += ["--resources-path", str(path)]
    if args.enable_app_health_check:
        sidecar.append("--enable-app-health-check")
    health = [(flag, getattr(args, flag[2:].replace("-", "_"))) for flag, _, _ in _HEALTH_FLAGS]
    for flag, value in (
        *health,
        ("--app-max-concurrency", args.app_max_concurrency),
        ("--max-body-size", args.max_body_size),
        ("--log-level", args.log_level),
        ("--dapr-graceful-shutdown-seconds", args.dapr_graceful_shutdown_seconds),
        ("--bus", args.bus),
        ("--invocation-store", args.invocation_store),
        ("--invocation-results-ttl", args.invocation_results_ttl),
    ):
        if value is not None:
            sidecar += [flag, str(value)]
    return RunPlan(
        app_id=args.app_id,
        sidecar=sidecar,
        app=command,
        http_port=http_port,
        app_port=app_port,
        environ=environ,
        ready_timeout=args.ready_timeout,
        # the sidecar gets its drain time, plus a margin to close, before it is killed
        stop_timeout=max(15.0, (args.dapr_graceful_shutdown_seconds or 0.0) + 10.0),
    )


def _run(args: argparse.Namespace, console: Console) -> int:
    from runtime.cli.run import Output, Supervisor

    plan = run_plan(args, dict(os.environ))
    return asyncio.run(Supervisor(plan, Output(console)).run())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``omnibus`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # Markup off: paths, payloads and error messages are printed as they are.
    console = Console(highlight=False, markup=False)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        code: int = args.handler(args, console)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    except (OmnibusError, OSError) as exc:
        Console(stderr=True, highlight=False, markup=False).print(
            f"omnibus: error: {exc}", style="red"
        )
        return 1
    except KeyboardInterrupt:
        return 130
    return code
