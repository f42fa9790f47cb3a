"""Child processes of a run: the ceiling app, the subscriber app and the sidecars.

Each child writes its output to a log file in the run's work directory (shown when it fails to
start); every child is terminated when the :class:`Children` context ends.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from benchmarks.backends import PUBSUB_NAME
from benchmarks.machine import ProcStat, read_proc
from benchmarks.services import Target, free_port

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 60.0


class ChildFailed(RuntimeError):
    """A child process exited or did not become ready; the message ends with its log."""


@dataclass(slots=True)
class Child:
    """One running child process and the port it serves."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    port: int

    @property
    def pid(self) -> int:
        """The process id."""
        return self.popen.pid

    def url(self, path: str) -> str:
        """``http://127.0.0.1:<port><path>``."""
        return f"http://127.0.0.1:{self.port}{path}"

    def stat(self) -> ProcStat:
        """CPU seconds and memory of the process now."""
        return read_proc(self.pid)

    def tail(self, lines: int = 15) -> str:
        """The end of the child's log."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_ready(self, path: str, timeout: float = START_TIMEOUT) -> None:
        """Poll ``GET path`` until 2xx; ChildFailed if the process dies or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise ChildFailed(
                    f"{self.name} exited with {self.popen.returncode}:\n{self.tail()}"
                )
            if 200 <= http_status(self.url(path)) < 300:
                return
            time.sleep(0.05)
        raise ChildFailed(f"{self.name} was not ready after {timeout:.0f}s:\n{self.tail()}")

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def http_status(url: str, method: str = "GET", timeout: float = 2.0) -> int:
    """The status of one request, 0 if the server cannot be reached."""
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return 0


def get_json(url: str, timeout: float = 10.0) -> Any:
    """GET ``url`` and decode its JSON body."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def component_yaml(target: Target) -> str:
    """The ``kind: Component`` document of ``target`` (values JSON-quoted, valid YAML)."""
    lines = [
        "apiVersion: dapr.io/v1alpha1",
        "kind: Component",
        "metadata:",
        f"  name: {PUBSUB_NAME}",
        "spec:",
        f"  type: {target.component_type}",
        "  version: v1",
        "  metadata:",
    ]
    for key, value in target.metadata.items():
        lines += [f"  - name: {key}", f"    value: {json.dumps(value)}"]
    return "\n".join(lines) + "\n"


@dataclass
class Children:
    """The child processes of one run; leaving the context stops them all."""

    workdir: Path
    started: list[Child] = field(default_factory=list)

    def __enter__(self) -> Children:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()

    def stop_all(self) -> None:
        """Stop every child, the last started first."""
        while self.started:
            self.started.pop().stop()

    def stop(self, child: Child) -> None:
        """Stop one child."""
        child.stop()
        if child in self.started:
            self.started.remove(child)

    def spawn(
        self, name: str, argv: list[str], port: int, env: dict[str, str] | None = None
    ) -> Child:
        """Start ``argv`` with its output in ``<workdir>/<name>.log``."""
        log = self.workdir / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
        child = Child(name, popen, log, port)
        self.started.append(child)
        return child

    def ceiling(self) -> Child:
        """The bare Starlette endpoint, ready."""
        port = free_port()
        argv = [sys.executable, "-m", "benchmarks.apps.ceiling", "--port", str(port)]
        child = self.spawn("ceiling", argv, port)
        child.wait_ready("/v1.0/healthz")
        return child

    def subscriber(self, topics: list[str], bulk_topics: list[str]) -> Child:
        """The counting subscriber app, ready."""
        port = free_port()
        argv = [sys.executable, "-m", "benchmarks.apps.subscriber", "--port", str(port)]
        argv += ["--pubsub", PUBSUB_NAME, "--topics", ",".join(topics)]
        argv += ["--bulk-topics", ",".join(bulk_topics)]
        child = self.spawn("subscriber-app", argv, port)
        child.wait_ready("/healthz")
        return child

    def sidecar(
        self,
        app_id: str,
        target: Target,
        *,
        app: Child | None = None,
        home: Path,
        components: dict[str, str] | None = None,
    ) -> Child:
        """``python -m runtime.sidecar`` for ``target``, ready (``/v1.0/healthz`` 204).

        ``components`` are more resource files (name -> YAML text) beside the pubsub's.
        """
        resources = self.workdir / f"resources-{app_id}"
        resources.mkdir(parents=True, exist_ok=True)
        (resources / "pubsub.yaml").write_text(component_yaml(target))
        for name, text in (components or {}).items():
            (resources / f"{name}.yaml").write_text(text)
        port = free_port()
        argv = [sys.executable, "-m", "runtime.sidecar", "--app-id", app_id]
        argv += ["--dapr-http-port", str(port), "--resources-path", str(resources)]
        argv += ["--log-level", "warning"]
        if app is not None:
            argv += ["--app-port", str(app.port)]
        # Its own OMNIBUS_HOME: the embedded buses and stores a sidecar keeps there (async
        # invocation results) stay in the run's directory, shared by the run's sidecars only.
        env = {**os.environ, "OMNIBUS_HOME": str(home)}
        child = self.spawn(f"sidecar-{app_id}", argv, port, env)
        child.wait_ready("/v1.0/healthz")
        return child
