"""End-to-end fixtures: real sidecar processes (``python -m runtime.sidecar``) and real app
processes on free ports, each sidecar with a temporary ``OMNIBUS_HOME`` and resources directory.

``cluster`` starts and stops them; ``pubsub`` is parametrized over the pub/sub types whose bus
module exists (sqlite always; redis with a private ``redis-server`` on a free port; rabbitmq on
the shared broker with names unique to the test, deleted afterwards).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.backends import missing_service

ROOT = Path(__file__).resolve().parents[2]
APPS = ROOT / "tests" / "apps"
_TOKENS = ("DAPR_API_TOKEN", "APP_API_TOKEN")  # a test sets them explicitly, never inherits them


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(check: Callable[[], object], timeout: float = 15.0, what: str = "condition") -> Any:
    """Poll ``check`` until it returns something truthy; that value, else fail."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@dataclass
class Proc:
    """A child process with its output in a log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Signal the process and wait for its exit code."""
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            raise AssertionError(f"{self.name} did not stop: {self.output()[-2000:]}") from None

    def kill(self) -> None:
        """SIGKILL: no shutdown at all."""
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait()


@dataclass
class App(Proc):
    """The subscriber test app (tests/apps/subscriber.py)."""

    port: int = 0
    record: Path = Path()

    def received(self, path: str | None = None) -> list[dict[str, Any]]:
        """Every POST the app got (of one route), oldest first."""
        if not self.record.exists():
            return []
        # The app may be writing right now: only lines it has finished (ending in a newline).
        complete = self.record.read_text().rpartition("\n")[0]
        lines = [json.loads(line) for line in complete.splitlines() if line]
        return [line for line in lines if path is None or line["path"] == path]

    def bodies(self, path: str) -> list[Any]:
        return [line["body"] for line in self.received(path)]


@dataclass
class Sidecar(Proc):
    """A sidecar process and its HTTP address."""

    port: int = 0
    app_id: str = ""
    token: str | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        headers = dict(kwargs.pop("headers", {}))
        if self.token:
            headers.setdefault("dapr-api-token", self.token)
        return requests.post(self.url(path), headers=headers, timeout=10, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        headers = dict(kwargs.pop("headers", {}))
        if self.token:
            headers.setdefault("dapr-api-token", self.token)
        return requests.get(self.url(path), headers=headers, timeout=10, **kwargs)

    def publish(self, topic: str, data: Any, pubsub: str = "pubsub", **kwargs: Any) -> None:
        reply = self.post(f"/v1.0/publish/{pubsub}/{topic}", json=data, **kwargs)
        assert reply.status_code == 204, reply.text

    def publish_bulk(self, topic: str, events: list[Any], pubsub: str = "pubsub") -> None:
        entries = [
            {"entryId": str(i), "event": event, "contentType": "application/json"}
            for i, event in enumerate(events)
        ]
        reply = self.post(f"/v1.0-alpha1/publish/bulk/{pubsub}/{topic}", json=entries)
        assert reply.status_code == 204, reply.text

    def wait_healthy(self, timeout: float = 30.0) -> None:
        def healthy() -> bool:
            if self.popen.poll() is not None:
                raise AssertionError(f"{self.name} exited: {self.output()[-3000:]}")
            try:
                return requests.get(self.url("/v1.0/healthz"), timeout=1).status_code == 204
            except requests.ConnectionError:
                return False

        wait_until(healthy, timeout, f"{self.name} to be healthy")


@dataclass
class Cluster:
    """Starts sidecars and apps for one test and stops them all at the end."""

    tmp: Path
    home: Path
    procs: list[Proc] = field(default_factory=list)
    topics: set[str] = field(default_factory=set)
    app_ids: set[str] = field(default_factory=set)
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    def topic(self, prefix: str = "t") -> str:
        """A topic name unique to this test run (removed from shared brokers afterwards)."""
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self.topics.add(name)
        return name

    def app_id(self, prefix: str) -> str:
        """An app id unique to this test run."""
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self.app_ids.add(name)
        return name

    def resources(self, *documents: str, name: str = "resources") -> Path:
        """A resources directory holding one file per YAML document."""
        directory = self.tmp / f"{name}-{uuid.uuid4().hex[:6]}"
        directory.mkdir()
        for i, text in enumerate(documents):
            (directory / f"{i:02d}.yaml").write_text(text)
        return directory

    def app(
        self,
        subscriptions: list[dict[str, Any]] | None = None,
        script: dict[str, str] | None = None,
        *,
        port: int | None = None,
    ) -> App:
        port = port or free_port()
        record = self.tmp / f"app-{port}.jsonl"
        argv = [sys.executable, str(APPS / "subscriber.py"), "--port", str(port)]
        argv += ["--record", str(record), "--script", json.dumps(script or {})]
        if subscriptions is not None:
            argv += ["--subscriptions", json.dumps(subscriptions)]
        log = self.tmp / f"app-{port}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        app = App(f"app:{port}", popen, log, port=port, record=record)
        self.procs.append(app)
        return app

    def sidecar(
        self,
        app_id: str,
        resources: Path | None,
        *,
        app: App | None = None,
        args: list[str] | None = None,
        env: dict[str, str] | None = None,
        port: int | None = None,
        wait: bool = True,
    ) -> Sidecar:
        port = port or free_port()
        self.app_ids.add(app_id)
        argv = [sys.executable, "-m", "runtime.sidecar", "--app-id", app_id]
        argv += ["--dapr-http-port", str(port), "--log-level", "info"]
        if resources is not None:
            argv += ["--resources-path", str(resources)]
        if app is not None:
            argv += ["--app-port", str(app.port)]
        argv += args or []
        inherited = {k: v for k, v in os.environ.items() if k not in _TOKENS}
        environ = {**inherited, "OMNIBUS_HOME": str(self.home), **(env or {})}
        log = self.tmp / f"sidecar-{app_id}-{port}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(argv, cwd=ROOT, env=environ, stdout=out, stderr=out)
        sidecar = Sidecar(
            f"sidecar:{app_id}",
            popen,
            log,
            port=port,
            app_id=app_id,
            token=(env or {}).get("DAPR_API_TOKEN"),
        )
        self.procs.append(sidecar)
        if wait:
            sidecar.wait_healthy()
        return sidecar

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.popen.poll() is None:
                proc.popen.terminate()
        for proc in reversed(self.procs):
            try:
                proc.popen.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        for cleanup in self.cleanups:
            cleanup()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """Processes for one test; every one is stopped at the end, failing or not."""
    made = Cluster(tmp_path, tmp_path / "home")
    try:
        yield made
    finally:
        made.close()


def component(name: str, type_: str, metadata: dict[str, str]) -> str:
    """A ``kind: Component`` document."""
    lines = [
        "apiVersion: dapr.io/v1alpha1",
        "kind: Component",
        "metadata:",
        f"  name: {name}",
        "spec:",
        f"  type: {type_}",
        "  version: v1",
        "  metadata:",
    ]
    for key, value in metadata.items():
        lines += [f"  - name: {key}", f"    value: {json.dumps(value)}"]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class PubSubKind:
    """How to write a pubsub component of one type for this test."""

    type: str
    metadata: dict[str, str]

    def component(self, name: str = "pubsub", **extra: str) -> str:
        return component(name, self.type, {**self.metadata, **extra})


def _module_exists(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server on a free port for the whole session."""
    binary = shutil.which("redis-server")
    if binary is None:
        missing_service("redis-server is not installed")
    assert binary is not None
    port = free_port()
    directory = tmp_path_factory.mktemp("redis")
    popen = subprocess.Popen(
        [binary, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(directory)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: _accepts(port), 10, "redis-server")
        yield f"127.0.0.1:{port}"
    finally:
        popen.terminate()
        popen.wait(10)


def _accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False


_KINDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
    pytest.param("rabbitmq", id="rabbitmq", marks=pytest.mark.rabbitmq),
]
_PRESENT = [p for p in _KINDS if _module_exists(f"bus.{p.values[0]}")]


@pytest.fixture(params=_PRESENT)
def pubsub(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PubSubKind]:
    """The pub/sub type under test, with a store private to the test."""
    kind = request.param
    if kind == "sqlite":
        yield PubSubKind("pubsub.sqlite", {"connectionString": str(tmp_path / "bus.db")})
    elif kind == "redis":
        url = request.getfixturevalue("redis_url")
        yield PubSubKind("pubsub.redis", {"redisHost": url})
    else:
        if not _accepts(5672):
            missing_service("RabbitMQ is not reachable on 127.0.0.1:5672")
        cluster: Cluster = request.getfixturevalue("cluster")
        cluster.cleanups.append(lambda: _delete_rabbit_objects(cluster))
        yield PubSubKind("pubsub.rabbitmq", {"connectionString": RABBITMQ_URL})


RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/"


def _delete_rabbit_objects(cluster: Cluster) -> None:
    """Remove every exchange and queue the test's sidecars may have declared (names as in
    bus/rabbitmq.py's topology), after the processes stopped."""
    import asyncio

    from bus.rabbitmq import RETRY_LADDER_MS
    from tests.backends.rabbitmq import delete_topology

    topics = cluster.topics | {f"{t}.deadletter" for t in cluster.topics}
    exchanges = {name for t in topics for name in (t, f"{t}@held")}
    queues = {f"{t}@held" for t in topics}
    for group in cluster.app_ids:
        for topic in topics:
            queue = f"{group}-{topic}"
            queues.add(queue)
            queues.update(f"{queue}@retry@{ms}" for ms in RETRY_LADDER_MS)
    asyncio.run(delete_topology(RABBITMQ_URL, queues, exchanges))


@dataclass
class RestartableRedis:
    """A private redis-server with an append-only file in tmp, so its data survives a restart
    on the same port (for outage tests; the session's ``redis_url`` server is never stopped)."""

    binary: str
    directory: Path
    port: int
    popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the server (again) on its port and wait until it accepts connections."""
        argv = [self.binary, "--port", str(self.port), "--dir", str(self.directory)]
        argv += ["--save", "", "--appendonly", "yes", "--appendfsync", "always"]
        self.popen = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: _accepts(self.port), 10, "redis-server")

    def stop(self) -> None:
        """SIGTERM: the server flushes its append-only file and exits."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.terminate()
            self.popen.wait(10)
        wait_until(lambda: not _accepts(self.port), 10, "redis-server to stop")


@pytest.fixture
def restartable_redis(tmp_path: Path) -> Iterator[RestartableRedis]:
    """A redis-server private to one test that the test may stop and start again."""
    binary = shutil.which("redis-server")
    if binary is None:
        missing_service("redis-server is not installed")
    assert binary is not None
    directory = tmp_path / "redis-aof"
    directory.mkdir()
    server = RestartableRedis(binary, directory, free_port())
    server.start()
    try:
        yield server
    finally:
        if server.popen is not None and server.popen.poll() is None:
            server.popen.terminate()
            server.popen.wait(10)


class ThreadedProxy:
    """tests/rabbitmq_proxy.CuttableProxy on an event loop of its own thread, for tests that
    drive processes synchronously; :meth:`down` cuts every connection and refuses new ones
    until :meth:`up`, like a network outage."""

    def __init__(self, target_host: str, target_port: int) -> None:
        import asyncio
        import threading

        from tests.rabbitmq_proxy import CuttableProxy

        proxy = CuttableProxy(target_host, target_port)
        self.proxy = proxy
        self.refusing = False
        accept = proxy._accept

        async def gated(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            if self.refusing:
                writer.transport.abort()
                return
            await accept(reader, writer)

        proxy._accept = gated  # type: ignore[method-assign]
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(proxy.__aenter__(), self.loop).result(10)
        self.port = proxy.port

    def _call(self, function: Callable[[], None]) -> None:
        import asyncio

        async def run() -> None:
            function()

        asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def down(self) -> None:
        """Cut every connection and refuse new ones."""

        def cut() -> None:
            self.refusing = True
            self.proxy.cut()

        self._call(cut)

    def up(self) -> None:
        """Accept connections again."""

        def accept() -> None:
            self.refusing = False

        self._call(accept)

    def close(self) -> None:
        import asyncio

        closing = self.proxy.__aexit__(None, None, None)
        asyncio.run_coroutine_threadsafe(closing, self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def rabbitmq_proxy() -> Iterator[ThreadedProxy]:
    """A cuttable TCP proxy in front of the shared RabbitMQ broker."""
    if not _accepts(5672):
        missing_service("RabbitMQ is not reachable on 127.0.0.1:5672")
    proxy = ThreadedProxy("127.0.0.1", 5672)
    try:
        yield proxy
    finally:
        proxy.close()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs mounted for one test (needs root), unmounted at the end."""
    directory = tmp_path / "small-disk"
    directory.mkdir()
    mount = shutil.which("mount")
    done = subprocess.run(
        [mount or "mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(directory)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        missing_service(f"cannot mount a tmpfs: {done.stderr.strip() or done.returncode}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)
