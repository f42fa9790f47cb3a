"""The brokers a run uses: a private redis-server, the shared RabbitMQ, a temp SQLite file.

Nothing here touches a broker the run did not start, except RabbitMQ at 127.0.0.1:5672, where
every name carries the run's unique prefix and is deleted at the end.  A backend that cannot be
reached becomes a skip reason instead of an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

RABBIT_URL = "amqp://guest:guest@127.0.0.1:5672/"
COMPONENT_TYPES = {
    "sqlite": "pubsub.sqlite",
    "redis": "pubsub.redis",
    "rabbitmq": "pubsub.rabbitmq",
    "memory": "pubsub.in-memory",
}


@dataclass(frozen=True, slots=True)
class Target:
    """How to reach one backend: its component type and metadata (as in a component file)."""

    backend: str
    metadata: dict[str, str]

    @property
    def component_type(self) -> str:
        """``pubsub.<backend>`` as Dapr spells it."""
        return COMPONENT_TYPES[self.backend]


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """A private ``redis-server`` on a free port, without persistence, stopped on exit."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self._workdir = workdir
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the server and wait until it answers PING."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        self._process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self._workdir), "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while not _ping_redis(self.port):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the private redis-server did not start")
            time.sleep(0.05)

    @property
    def pid(self) -> int | None:
        """The server's process id, while it runs."""
        return None if self._process is None else self._process.pid

    def stop(self) -> None:
        """Stop the server (it holds nothing worth keeping)."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()


def _ping_redis(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def redis_version() -> str:
    """The installed redis-server's version."""
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
    for part in out.split():
        if part.startswith("v="):
            return part[2:]
    return out.strip() or "unknown"


async def rabbit_version(url: str = RABBIT_URL) -> str:
    """Connect once and return the server's version (raises if it cannot be reached)."""
    import aio_pika

    connection = await asyncio.wait_for(aio_pika.connect(url), 5)
    try:
        properties = connection.transport.connection.server_properties  # type: ignore[union-attr]
        version = properties.get("version", "unknown")
        return version.decode() if isinstance(version, bytes) else str(version)
    finally:
        await connection.close()


@dataclass
class Services:
    """The brokers of one run; use as a context manager so everything stops and is deleted."""

    backends: tuple[str, ...]
    run_id: str
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="omnibus-bench-")))
    targets: dict[str, Target] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    redis: RedisServer | None = None
    rabbit_names: list[tuple[str, str]] = field(default_factory=list)  # (kind, name) to delete

    async def __aenter__(self) -> Services:
        for backend in self.backends:
            try:
                self.targets[backend] = await self._start(backend)
            except Exception as exc:  # any failure to reach a broker is a skip, not a crash
                self.unavailable[backend] = f"{type(exc).__name__}: {exc}".strip(": ")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with contextlib.suppress(Exception):
            await self.delete_rabbit_names()
        if self.redis is not None:
            self.redis.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    async def _start(self, backend: str) -> Target:
        if backend == "sqlite":
            self.versions["sqlite"] = _sqlite_version()
            return Target("sqlite", {"connectionString": str(self.workdir / "bus.db")})
        if backend == "redis":
            self.redis = RedisServer(self.workdir)
            await asyncio.to_thread(self.redis.start)
            self.versions["redis"] = redis_version()
            return Target("redis", {"redisHost": f"127.0.0.1:{self.redis.port}"})
        if backend == "rabbitmq":
            self.versions["rabbitmq"] = await rabbit_version()
            return Target("rabbitmq", {"connectionString": RABBIT_URL})
        return Target(backend, {})

    def redis_url(self) -> str:
        """The private server's URL, for the raw-client baselines."""
        if self.redis is None:
            raise RuntimeError("redis is not part of this run")
        return f"redis://127.0.0.1:{self.redis.port}/0"

    def forget_rabbit(self, kind: str, name: str) -> None:
        """Remember a queue or exchange (``kind``) to delete when the run ends."""
        self.rabbit_names.append((kind, name))

    async def delete_rabbit_names(self) -> None:
        """Delete every queue and exchange this run created on the shared RabbitMQ."""
        if not self.rabbit_names:
            return
        import aio_pika

        connection = await aio_pika.connect(RABBIT_URL)
        async with connection:
            for kind, name in self.rabbit_names:
                channel = await connection.channel()  # a failed delete closes its channel
                with contextlib.suppress(Exception):
                    if kind == "queue":
                        await channel.queue_delete(name)
                    else:
                        await channel.exchange_delete(name)
                with contextlib.suppress(Exception):
                    await channel.close()
        self.rabbit_names.clear()


def _sqlite_version() -> str:
    import sqlite3

    return sqlite3.sqlite_version
