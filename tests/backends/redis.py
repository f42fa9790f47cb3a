"""The Redis Streams backend for the conformance suite: a private redis-server on a free port.

The server is started once per test session (``--save '' --appendonly no`` in a temp dir) and
killed at the end; the Redis on 6379 is never touched.  Topics are unique per test, so tests
share the server without seeing each other.  :class:`RedisServer` is also used by the chaos
tests to start, kill and restart servers of their own.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio

from bus.redis import RedisBroker
from bus.redis.settings import RedisSettings
from tests.backends import BackendEnv, missing_service


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """A private redis-server process in its own directory."""

    def __init__(self, directory: Path, *, durable: bool = False, port: int | None = None) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.durable = durable
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """``host:port`` as ``redisHost`` spells it."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the server and wait until it answers PING."""
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if self.durable
            else ["--appendonly", "no"]
        )
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--dir",
                str(self.directory),
                *persistence,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1)
        try:
            while True:
                try:
                    if client.ping():
                        return
                except redis.exceptions.RedisError:
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"redis-server did not start on {self.port}") from None
                    time.sleep(0.05)
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL the server (a crash) and reap it."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def settings(self, **overrides: Any) -> RedisSettings:
        """Settings pointing at this server."""
        return RedisSettings(host="127.0.0.1", port=self.port, **overrides)


def redis_available() -> bool:
    """True if a redis-server binary is installed."""
    return shutil.which("redis-server") is not None


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One private, non-persistent redis-server for the whole session."""
    if not redis_available():
        missing_service("redis-server is not installed")
    with tempfile.TemporaryDirectory(prefix="omnibus-redis-") as directory:
        server = RedisServer(Path(directory))
        server.start()
        try:
            yield server
        finally:
            server.kill()


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    """A plain redis-py client on the private server, to look at (or break) what is stored."""
    client = redis.asyncio.Redis(host="127.0.0.1", port=redis_server.port)
    yield client
    await client.aclose()


@pytest.fixture
def backend_redis(redis_server: RedisServer) -> Iterator[BackendEnv]:
    # A short reclaim interval keeps trimming and dead-consumer reclaim quick in tests.
    settings = redis_server.settings(redeliver_interval=1.0)

    def new_broker(**kwargs: Any) -> RedisBroker:
        return RedisBroker(settings, **kwargs)

    async def retained(topic: str) -> int:
        client = redis.asyncio.Redis(host="127.0.0.1", port=redis_server.port)
        try:
            return int(await client.xlen(topic))
        finally:
            await client.aclose()

    yield BackendEnv("redis", new_broker, durable=True, retained=retained)
