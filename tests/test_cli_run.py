"""``omnibus run``'s process supervision, with a stand-in sidecar.

The stand-in is a real HTTP server process that answers the outbound health check and logs what
happens to it, so the tests exercise the real start order, streaming, signals and exit codes of
:class:`runtime.cli.run.Supervisor` without needing the sidecar's components.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from rich.console import Console

from runtime.cli import build_parser, run_plan
from runtime.cli.run import (
    Output,
    RunPlan,
    Supervisor,
    app_environment,
    exit_code,
    free_port,
)
from runtime.config import HealthCheck, parse_args

FAKE_SIDECAR = textwrap.dedent(
    """
    import http.server, os, signal, sys, threading, time
    port = int(sys.argv[sys.argv.index("--dapr-http-port") + 1])
    if os.environ.get("FAKE_FAIL"):
        print("fake sidecar: bad component file", file=sys.stderr, flush=True)
        sys.exit(3)
    status = 500 if os.environ.get("FAKE_UNHEALTHY") else 204

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(status if self.path == "/v1.0/healthz/outbound" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Health)

    def stop(signum, frame):
        print(f"fake sidecar: {signal.Signals(signum).name}", file=sys.stderr, flush=True)
        threading.Thread(target=server.shutdown).start()

    signal.signal(signal.SIGTERM, stop)
    if os.environ.get("FAKE_DIE_AFTER"):
        threading.Timer(float(os.environ["FAKE_DIE_AFTER"]), lambda: os._exit(5)).start()
    print(f"fake sidecar: listening on {port}", file=sys.stderr, flush=True)
    print(f"fake sidecar: pid {os.getpid()}", file=sys.stderr, flush=True)
    server.serve_forever()
    print("fake sidecar: stopped", file=sys.stderr, flush=True)
    """
)

# An app that says when it is ready, reports SIGTERM/SIGINT and exits 0 on them.
WAITING_APP = textwrap.dedent(
    """
    import os, signal, sys, time
    def bye(signum, frame):
        print(f"app: {signal.Signals(signum).name}, bye", flush=True)
        sys.exit(0)
    signal.signal(signal.SIGTERM, bye)
    signal.signal(signal.SIGINT, bye)
    print(f"app: pid {os.getpid()}", flush=True)
    print("app: ready", flush=True)
    time.sleep(60)
    print("app: nobody stopped me", flush=True)
    """
)


@pytest.fixture
def fake_sidecar(tmp_path: Path) -> Path:
    path = tmp_path / "fake_sidecar.py"
    path.write_text(FAKE_SIDECAR)
    return path


def make_plan(
    fake_sidecar: Path, app: Sequence[str], *, app_port: int | None = None, **env: str
) -> RunPlan:
    port = free_port()
    return RunPlan(
        app_id="orders",
        sidecar=[sys.executable, str(fake_sidecar), "--dapr-http-port", str(port)],
        app=list(app),
        http_port=port,
        app_port=app_port,
        environ={**os.environ, **env},
        ready_timeout=10.0,
        stop_timeout=5.0,
    )


async def supervise(plan: RunPlan) -> tuple[int, str]:
    buffer = io.StringIO()
    code = await Supervisor(plan, Output(Console(file=buffer, width=200))).run()
    return code, buffer.getvalue()


def python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


async def test_exit_code_and_prefixed_output(fake_sidecar: Path) -> None:
    plan = make_plan(fake_sidecar, python("import sys; print('hello'); sys.exit(3)"))

    code, out = await supervise(plan)

    assert code == 3
    lines = out.splitlines()
    assert "== APP == hello" in lines
    assert f"== OMNIBUS == fake sidecar: listening on {plan.http_port}" in lines
    # The sidecar is stopped gracefully once the app exited by itself.
    assert lines.index("== APP == hello") < lines.index("== OMNIBUS == fake sidecar: SIGTERM")
    assert "== OMNIBUS == fake sidecar: stopped" in lines


async def test_app_environment(fake_sidecar: Path) -> None:
    app = python(
        """
        import json, os
        keys = ["APP_ID", "APP_PORT", "DAPR_HTTP_PORT", "DAPR_GRPC_PORT", "OMNIBUS_HOME"]
        print(json.dumps({k: os.environ.get(k) for k in keys}))
        """
    )
    plan = make_plan(
        fake_sidecar, app, app_port=4711, DAPR_GRPC_PORT="50001", OMNIBUS_HOME="/tmp/omnihome"
    )

    code, out = await supervise(plan)

    assert code == 0
    line = next(x for x in out.splitlines() if x.startswith("== APP == {"))
    assert json.loads(line.removeprefix("== APP == ")) == {
        "APP_ID": "orders",
        "APP_PORT": "4711",
        "DAPR_HTTP_PORT": str(plan.http_port),
        "DAPR_GRPC_PORT": None,
        "OMNIBUS_HOME": "/tmp/omnihome",
    }


def test_app_environment_without_app_port() -> None:
    env = app_environment({"APP_PORT": "1", "PATH": "/bin"}, app_id="a", http_port=5, app_port=None)
    assert "APP_PORT" not in env
    assert env["PATH"] == "/bin" and env["DAPR_HTTP_PORT"] == "5" and env["APP_ID"] == "a"


async def test_sidecar_failing_to_start_is_reported(fake_sidecar: Path) -> None:
    plan = make_plan(fake_sidecar, python("print('app started')"), FAKE_FAIL="1")

    code, out = await supervise(plan)

    assert code == 1
    assert "== OMNIBUS == fake sidecar: bad component file" in out
    assert "the sidecar exited with code 3 before it was ready" in out
    assert "app started" not in out


async def test_sidecar_never_ready_times_out(fake_sidecar: Path) -> None:
    plan = make_plan(fake_sidecar, python("print('app started')"), FAKE_UNHEALTHY="1")
    plan = RunPlan(**{**_fields(plan), "ready_timeout": 0.5})

    code, out = await supervise(plan)

    assert code == 1
    assert "the sidecar was not ready after 0.5s" in out
    assert "fake sidecar: SIGTERM" in out  # and it was stopped, not left behind
    assert "app started" not in out


async def test_app_command_not_found(fake_sidecar: Path, tmp_path: Path) -> None:
    plan = make_plan(fake_sidecar, [str(tmp_path / "no-such-app")])

    code, out = await supervise(plan)

    assert code == 127
    assert "cannot start the app" in out
    assert "fake sidecar: stopped" in out


async def test_sidecar_dying_stops_the_app(fake_sidecar: Path) -> None:
    plan = make_plan(fake_sidecar, python(WAITING_APP), FAKE_DIE_AFTER="2.0")

    started = time.monotonic()
    code, out = await supervise(plan)

    assert code == 1
    assert "the sidecar exited unexpectedly with code 5" in out
    assert "== APP == app: SIGTERM, bye" in out
    assert time.monotonic() - started < 10


def _fields(plan: RunPlan) -> dict[str, object]:
    return {name: getattr(plan, name) for name in RunPlan.__dataclass_fields__}


DRIVER = textwrap.dedent(
    """
    import asyncio, json, sys
    from rich.console import Console
    from runtime.cli.run import Output, RunPlan, Supervisor
    plan = RunPlan(**json.loads(sys.argv[1]))
    console = Console(file=sys.stdout, width=200)
    sys.exit(asyncio.run(Supervisor(plan, Output(console)).run()))
    """
)


def start_driver(plan: RunPlan) -> subprocess.Popen[str]:
    """``omnibus run`` as its own process, so that it can receive signals."""
    fields = {**_fields(plan), "environ": dict(plan.environ)}
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, json.dumps(fields)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )


def read_until(process: subprocess.Popen[str], marker: str, seen: list[str]) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        seen.append(line.rstrip("\n"))
        if marker in line:
            return
    raise AssertionError(f"{marker!r} never appeared in {seen}")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_the_app_first_then_the_sidecar(
    fake_sidecar: Path, signum: signal.Signals
) -> None:
    # Given an app and its sidecar running under omnibus run
    process = start_driver(make_plan(fake_sidecar, python(WAITING_APP)))
    seen: list[str] = []
    try:
        read_until(process, "== APP == app: ready", seen)
        # When omnibus run receives the signal
        process.send_signal(signum)
        rest, _ = process.communicate(timeout=20)
    finally:
        process.kill()
    lines = seen + rest.splitlines()
    # Then the app gets it first, and the sidecar gets SIGTERM only once the app is gone
    assert f"== APP == app: {signum.name}, bye" in lines
    app_gone = lines.index(f"== APP == app: {signum.name}, bye")
    assert app_gone < lines.index("== OMNIBUS == fake sidecar: SIGTERM")
    assert "== OMNIBUS == fake sidecar: stopped" in lines
    assert "nobody stopped me" not in rest
    assert process.returncode == 0  # the app's exit code


def test_second_signal_kills_both(fake_sidecar: Path) -> None:
    # Given an app that ignores SIGTERM
    app = python(
        """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("app: ready", flush=True)
        time.sleep(60)
        """
    )
    process = start_driver(make_plan(fake_sidecar, app))
    seen: list[str] = []
    try:
        read_until(process, "== APP == app: ready", seen)
        process.send_signal(signal.SIGTERM)
        read_until(process, "stopping the app, then the sidecar", seen)
        started = time.monotonic()
        # When a second SIGTERM comes
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=20)
    finally:
        process.kill()
    # Then both are killed at once instead of waiting for the stop time-out
    assert time.monotonic() - started < 4
    assert "SIGTERM again: killing the app and the sidecar" in rest
    assert process.returncode == 128 + signal.SIGKILL


def test_sidecar_alone_until_signalled(fake_sidecar: Path) -> None:
    process = start_driver(make_plan(fake_sidecar, []))
    seen: list[str] = []
    try:
        read_until(process, "sidecar ready", seen)
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=20)
    finally:
        process.kill()
    assert "== OMNIBUS == fake sidecar: SIGTERM" in rest
    assert process.returncode == 0


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


@pytest.mark.skipif(sys.platform != "linux", reason="parent-death signal is Linux only")
def test_children_do_not_outlive_a_killed_omnibus_run(fake_sidecar: Path) -> None:
    # Given omnibus run with its sidecar and app up
    process = start_driver(make_plan(fake_sidecar, python(WAITING_APP)))
    seen: list[str] = []
    try:
        read_until(process, "== APP == app: ready", seen)
    finally:
        # When omnibus run is killed without a chance to stop them
        process.kill()
        process.communicate()
    pids = [int(line.rsplit(" ", 1)[1]) for line in seen if " pid " in line]
    assert len(pids) == 2
    # Then both get SIGTERM from the kernel and exit
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in pids)


class _ClosedPipe(io.StringIO):
    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_output_to_a_closed_pipe_is_dropped() -> None:
    console = Console(file=_ClosedPipe())
    output = Output(console)
    output.line(("== APP ==", "green"), "first")  # neither raises nor exits
    output.line(("== APP ==", "green"), "second")
    assert console.quiet


def test_output_colours_the_prefix_on_a_terminal_only() -> None:
    plain, terminal = io.StringIO(), io.StringIO()
    Output(Console(file=plain)).line(("== APP ==", "bold green"), "[b]hi[/b] \x1b[31mred")
    Output(Console(file=terminal, force_terminal=True)).line(("== APP ==", "bold green"), "hi")

    assert plain.getvalue() == "== APP == [b]hi[/b] \x1b[31mred\n"  # the app's text as it is
    assert terminal.getvalue().endswith("== APP ==\x1b[0m hi\n")
    assert terminal.getvalue().startswith("\x1b[1;32m")


def test_exit_code_of_a_signalled_process() -> None:
    assert exit_code(0) == 0
    assert exit_code(3) == 3
    assert exit_code(-signal.SIGTERM) == 128 + signal.SIGTERM


def test_run_arguments_and_plan(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        [
            "run",
            "--app-id",
            "orders",
            "--app-port",
            "0",
            "--resources-path",
            str(tmp_path),
            "--app-max-concurrency",
            "4",
            "--log-level",
            "debug",
            "--dapr-graceful-shutdown-seconds",
            "20",
            "--",
            "python",
            "app.py",
            "--app-id",
            "x",
        ]
    )

    plan = run_plan(args, {"OMNIBUS_HOME": str(tmp_path / "unused")})

    assert plan.app == ["python", "app.py", "--app-id", "x"]
    assert plan.app_port is not None and plan.app_port > 0  # 0 picks a free port
    assert plan.http_port > 0 and plan.http_port != plan.app_port
    sidecar = list(plan.sidecar)
    assert sidecar[:3] == [sys.executable, "-m", "runtime.sidecar"]
    assert _flag(sidecar, "--app-id") == "orders"
    assert _flag(sidecar, "--dapr-http-port") == str(plan.http_port)
    assert _flag(sidecar, "--app-port") == str(plan.app_port)
    assert _flag(sidecar, "--resources-path") == str(tmp_path)
    assert _flag(sidecar, "--app-max-concurrency") == "4"
    assert _flag(sidecar, "--log-level") == "debug"
    assert _flag(sidecar, "--dapr-graceful-shutdown-seconds") == "20.0"
    assert plan.stop_timeout == 30.0  # never killed while it may still drain
    assert not (tmp_path / "unused").exists()  # resources given: no defaults written


def test_run_without_app_port_has_no_app_channel(tmp_path: Path) -> None:
    args = build_parser().parse_args(["run", "--app-id", "pub", "--dapr-http-port", "3999"])
    plan = run_plan(args, {"OMNIBUS_HOME": str(tmp_path)})
    assert plan.app_port is None and plan.app == [] and plan.http_port == 3999
    assert "--app-port" not in plan.sidecar
    # Without --resources-path: the default components, written on first use
    assert _flag(list(plan.sidecar), "--resources-path") == str(tmp_path / "components")
    assert (tmp_path / "components" / "pubsub.yaml").is_file()


@pytest.mark.parametrize(
    "argv",
    [
        ["run"],  # --app-id is required
        ["run", "--app-id", "bad id"],
        ["run", "--app-id", "a", "--app-port", "70000"],
        ["run", "--app-id", "a", "--dapr-http-port", "http"],
    ],
)
def test_run_rejects_bad_arguments(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def _flag(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_run_passes_app_health_flags_to_the_sidecar(tmp_path: Path) -> None:
    argv = ["run", "--app-id", "a", "--app-port", "7000", "--enable-app-health-check"]
    argv += ["--app-health-check-path", "/up", "--app-health-probe-interval", "2"]
    argv += ["--app-health-probe-timeout", "300", "--app-health-threshold", "4"]
    plan = run_plan(build_parser().parse_args(argv), {"OMNIBUS_HOME": str(tmp_path)})
    sidecar = list(plan.sidecar)
    assert "--enable-app-health-check" in sidecar
    assert _flag(sidecar, "--app-health-check-path") == "/up"
    assert _flag(sidecar, "--app-health-probe-interval") == "2"
    assert _flag(sidecar, "--app-health-probe-timeout") == "300"
    assert _flag(sidecar, "--app-health-threshold") == "4"
    config = parse_args(sidecar[3:])  # and the sidecar takes them
    assert config.app_health == HealthCheck(path="/up", interval=2.0, timeout=0.3, threshold=4)
    plain = run_plan(build_parser().parse_args(argv[:5]), {"OMNIBUS_HOME": str(tmp_path)})
    assert not any(arg.startswith(("--app-health", "--enable")) for arg in plain.sidecar)


def test_run_passes_bus_and_invocation_flags_to_the_sidecar(tmp_path: Path) -> None:
    argv = ["run", "--app-id", "a", "--bus", "orders-bus", "--invocation-store", "redis-state"]
    argv += ["--invocation-results-ttl", "2h"]
    plan = run_plan(build_parser().parse_args(argv), {"OMNIBUS_HOME": str(tmp_path)})
    sidecar = list(plan.sidecar)
    assert _flag(sidecar, "--bus") == "orders-bus"
    assert _flag(sidecar, "--invocation-store") == "redis-state"
    assert _flag(sidecar, "--invocation-results-ttl") == "2h"
    config = parse_args(sidecar[3:])  # and the sidecar takes them
    assert config.bus == "orders-bus"
    plain = run_plan(build_parser().parse_args(argv[:3]), {"OMNIBUS_HOME": str(tmp_path)})
    assert not {"--bus", "--invocation-store", "--invocation-results-ttl"} & set(plain.sidecar)
