"""``omnibus run``: supervise one sidecar process and one app process.

Start-up order: the sidecar first, then the app once ``/v1.0/healthz/outbound`` answers 204, so the
app can publish at once (the sidecar itself waits for the app port before it subscribes).  Both
outputs are streamed line by line with the prefixes ``== APP ==`` and ``== OMNIBUS ==``.

Shut-down order: on SIGINT/SIGTERM the signal goes to the app's process group first; once the app
has exited (or after ``stop_timeout``, then SIGKILL) the sidecar gets SIGTERM and drains, and is
killed if it is still up after ``stop_timeout``.  When the app exits by itself the sidecar is
stopped the same way.  The exit code is the app's (128 + N when signal N ended it); a sidecar that
fails before it is ready, or dies while the app runs, makes the exit code 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from rich.console import COLOR_SYSTEMS, Console
from rich.style import Style

_APP = ("== APP ==", "bold green")
_SIDECAR = ("== OMNIBUS ==", "bold magenta")
_MAX_LINE = 64 * 1024
_STREAM_LINGER = 1.0  # seconds to wait for the last output of a process that exited


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def app_environment(
    base: Mapping[str, str], *, app_id: str, http_port: int, app_port: int | None
) -> dict[str, str]:
    """The app's environment: what a Dapr app reads (APP_ID, APP_PORT, DAPR_HTTP_PORT)."""
    env = dict(base)
    env["APP_ID"] = app_id
    env["DAPR_HTTP_PORT"] = str(http_port)
    env.pop("DAPR_GRPC_PORT", None)  # no gRPC API: an SDK must not try it
    if app_port is None:
        env.pop("APP_PORT", None)
    else:
        env["APP_PORT"] = str(app_port)
    env.setdefault("PYTHONUNBUFFERED", "1")  # so a Python app's prints show up as they happen
    return env


def exit_code(returncode: int) -> int:
    """A process's return code as a shell reports it (128 + N for death by signal N)."""
    return 128 - returncode if returncode < 0 else returncode


@dataclass(frozen=True, slots=True)
class RunPlan:
    """Everything ``omnibus run`` starts, decided before anything is started."""

    app_id: str
    sidecar: Sequence[str]  # argv of the sidecar process
    app: Sequence[str]  # argv of the app; empty: run the sidecar alone
    http_port: int
    app_port: int | None
    environ: Mapping[str, str] = field(default_factory=dict)
    ready_timeout: float = 30.0
    stop_timeout: float = 15.0

    @property
    def sidecar_url(self) -> str:
        """The sidecar's HTTP API."""
        return f"http://127.0.0.1:{self.http_port}"


class Output:
    """Prefixed, coloured lines (plain text when not a terminal), written as they come.

    The prefix is rendered once, in the console's colours; each line is then one write, so a
    chatty app is not slowed down by rendering, and its own colour codes pass through.  When whoever
    reads our output is gone (``omnibus run ... | head``), output stops but the children's pipes
    are still drained, so they never block on a full pipe.
    """

    def __init__(self, console: Console) -> None:
        self.console = console
        self._prefixes: dict[tuple[str, str], str] = {}

    def _prefix(self, prefix: tuple[str, str]) -> str:
        rendered = self._prefixes.get(prefix)
        if rendered is None:
            label, name = prefix
            style = Style.parse(name)
            if self.console.no_color:
                style = style.without_color
            system = self.console.color_system  # None when not a terminal
            rendered = style.render(label, color_system=COLOR_SYSTEMS[system] if system else None)
            self._prefixes[prefix] = rendered
        return rendered

    def line(self, prefix: tuple[str, str], text: str) -> None:
        """One line of a child's output."""
        if self.console.quiet:
            return
        out = self.console.file
        try:
            out.write(f"{self._prefix(prefix)} {text}\n")
            out.flush()
        except BrokenPipeError:
            self.console.quiet = True
            with contextlib.suppress(OSError, ValueError):
                fd = out.fileno()
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, fd)  # so that the flush at exit does not fail once more
                os.close(devnull)

    def note(self, text: str) -> None:
        """A line from omnibus run itself."""
        self.line(("omnibus:", "bold cyan"), text)

    def error(self, text: str) -> None:
        """An error of omnibus run itself."""
        self.line(("omnibus: error:", "bold red"), text)


async def _pump(
    stream: asyncio.StreamReader | None, output: Output, prefix: tuple[str, str]
) -> None:
    """Copy a child's output line by line; very long lines are cut into pieces."""
    if stream is None:
        return
    pending = b""
    while chunk := await stream.read(65536):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        if len(pending) > _MAX_LINE:
            lines.append(pending)
            pending = b""
        for line in lines:
            output.line(prefix, line.decode(errors="replace").rstrip("\r"))
    if pending:
        output.line(prefix, pending.decode(errors="replace").rstrip("\r"))


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when omnibus run dies, even by SIGKILL (Linux).

    Without it a killed ``omnibus run`` would leave its sidecar and app running, unseen.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class _Child:
    """A child process in its own session, with its output pumped to ``output``."""

    def __init__(self, process: asyncio.subprocess.Process, pumps: list[asyncio.Task[None]]):
        self.process = process
        self.pumps = pumps
        self.exited = asyncio.create_task(process.wait())

    @classmethod
    async def start(
        cls, argv: Sequence[str], env: Mapping[str, str], output: Output, prefix: tuple[str, str]
    ) -> _Child:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=dict(env),
            # Its own process group: a Ctrl-C in the terminal reaches omnibus only, which then
            # stops the app and the sidecar in order instead of both at once.
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        pumps = [
            asyncio.create_task(_pump(process.stdout, output, prefix)),
            asyncio.create_task(_pump(process.stderr, output, prefix)),
        ]
        return cls(process, pumps)

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the child's whole process group (a shell script's children too)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)

    async def stop(self, signum: int, timeout: float) -> int:
        """Signal, wait up to ``timeout``, then kill; returns the return code."""
        if not self.exited.done():
            self.signal(signum)
            try:
                await asyncio.wait_for(asyncio.shield(self.exited), timeout)
            except TimeoutError:
                self.signal(signal.SIGKILL)
        return await self.exited

    async def finish_output(self) -> None:
        """Wait briefly for the last lines (a grandchild may keep the pipes open)."""
        _, pending = await asyncio.wait(self.pumps, timeout=_STREAM_LINGER)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


async def _http_status(port: int, path: str) -> int | None:
    """The status of ``GET path`` on 127.0.0.1:port, or None if nothing answers."""
    try:
        async with asyncio.timeout(1.0):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                writer.write(request.encode())
                await writer.drain()
                status_line = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError):
        return None
    parts = status_line.split()
    return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None


class Supervisor:
    """Runs a :class:`RunPlan`: start in order, stream, forward signals, stop in order."""

    def __init__(self, plan: RunPlan, output: Output) -> None:
        self.plan = plan
        self.out = output
        self._stop = asyncio.Event()
        self._signum: int = signal.SIGTERM
        self._children: list[_Child] = []

    async def run(self) -> int:
        """Start the sidecar and the app; returns the exit code of ``omnibus run``."""
        loop = asyncio.get_running_loop()
        installed = []
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signum, self._on_signal, signum)
                installed.append(signum)
        try:
            return await self._run()
        finally:
            for child in self._children:
                if not child.exited.done():
                    child.signal(signal.SIGKILL)
                    await child.exited
                await child.finish_output()
            for signum in installed:
                loop.remove_signal_handler(signum)

    def _on_signal(self, signum: int) -> None:
        if self._stop.is_set():  # a second Ctrl-C: stop waiting for a graceful end
            self.out.note(f"{signal.Signals(signum).name} again: killing the app and the sidecar")
            for child in self._children:
                child.signal(signal.SIGKILL)
            return
        self._signum = signum
        self._stop.set()

    async def _run(self) -> int:
        plan = self.plan
        sidecar_env = {**plan.environ, "PYTHONUNBUFFERED": "1"}
        self.out.note(f"starting the sidecar of {plan.app_id!r} on {plan.sidecar_url}")
        sidecar = await _Child.start(plan.sidecar, sidecar_env, self.out, _SIDECAR)
        self._children.append(sidecar)
        failed = await self._wait_ready(sidecar)
        if failed is not None:
            return failed
        if not plan.app:
            self.out.note(
                f"sidecar ready on port {plan.http_port}; no app command: Ctrl-C stops it"
            )
            return await self._sidecar_alone(sidecar)
        app_port = "" if plan.app_port is None else f" APP_PORT={plan.app_port}"
        self.out.note(
            f"sidecar ready; starting the app with DAPR_HTTP_PORT={plan.http_port}{app_port}"
        )
        env = app_environment(
            plan.environ, app_id=plan.app_id, http_port=plan.http_port, app_port=plan.app_port
        )
        try:
            app = await _Child.start(plan.app, env, self.out, _APP)
        except OSError as exc:
            self.out.error(f"cannot start the app {plan.app[0]!r}: {exc.strerror or exc}")
            await sidecar.stop(signal.SIGTERM, plan.stop_timeout)
            return 127 if isinstance(exc, FileNotFoundError) else 126
        self._children.append(app)
        return await self._until_done(sidecar, app)

    async def _wait_ready(self, sidecar: _Child) -> int | None:
        """None once the sidecar's outbound health answers 204, else the exit code to return."""
        plan = self.plan
        stop = asyncio.create_task(self._stop.wait())
        deadline = asyncio.get_running_loop().time() + plan.ready_timeout
        try:
            while True:
                if sidecar.exited.done():
                    await sidecar.finish_output()
                    code = exit_code(sidecar.exited.result())
                    self.out.error(f"the sidecar exited with code {code} before it was ready")
                    return 1
                if stop.done():
                    await sidecar.stop(signal.SIGTERM, plan.stop_timeout)
                    return 128 + self._signum
                if await _http_status(plan.http_port, "/v1.0/healthz/outbound") == 204:
                    return None
                if asyncio.get_running_loop().time() > deadline:
                    self.out.error(f"the sidecar was not ready after {plan.ready_timeout:g}s")
                    await sidecar.stop(signal.SIGTERM, plan.stop_timeout)
                    return 1
                await asyncio.wait([sidecar.exited, stop], timeout=0.1)
        finally:
            stop.cancel()

    async def _sidecar_alone(self, sidecar: _Child) -> int:
        stop = asyncio.create_task(self._stop.wait())
        await asyncio.wait([sidecar.exited, stop], return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if not sidecar.exited.done():
            self.out.note(f"{signal.Signals(self._signum).name}: stopping the sidecar")
        return exit_code(await sidecar.stop(signal.SIGTERM, self.plan.stop_timeout))

    async def _until_done(self, sidecar: _Child, app: _Child) -> int:
        plan = self.plan
        stop = asyncio.create_task(self._stop.wait())
        waiting = [app.exited, sidecar.exited, stop]
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if app.exited.done():
            code = exit_code(app.exited.result())
            self.out.note(f"the app exited with code {code}; stopping the sidecar")
        elif self._stop.is_set():
            name = signal.Signals(self._signum).name
            self.out.note(f"{name}: stopping the app, then the sidecar")
            code = exit_code(await app.stop(self._signum, plan.stop_timeout))
        else:
            rc = exit_code(sidecar.exited.result())
            self.out.error(f"the sidecar exited unexpectedly with code {rc}; stopping the app")
            await app.stop(signal.SIGTERM, plan.stop_timeout)
            return 1
        await app.finish_output()
        rc = exit_code(await sidecar.stop(signal.SIGTERM, plan.stop_timeout))
        if rc != 0:
            self.out.note(f"the sidecar exited with code {rc}")
        return code
