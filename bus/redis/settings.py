"""Settings of the Redis Streams broker.

Built from component metadata by :mod:`components.pubsub_settings`; a value out of range raises
:class:`ConfigError` naming the metadata key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bus.errors import ConfigError

DEFAULT_PORT = 6379
Command = tuple[Any, ...]  # one Redis command as its words

_DURATIONS = {
    "dialTimeout": "dial_timeout",
    "readTimeout": "read_timeout",
    "writeTimeout": "write_timeout",
    "redeliverInterval": "redeliver_interval",
    "waitTimeout": "wait_timeout",
}


@dataclass(frozen=True, slots=True)
class RedisAddress:
    """Where a Redis server is and how to log in (``dial_timeout`` in seconds): what the settings
    of both Redis components (the bus's :class:`RedisSettings`, ``state.redis``'s) start with."""

    host: str = "localhost"
    port: int = DEFAULT_PORT
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    db: int = 0
    tls: bool = False
    dial_timeout: float = 5.0

    @classmethod
    def of(cls, settings: RedisAddress) -> RedisAddress:
        """The address part of a component's settings (the bus's or a state store's, both
        RedisAddress with more), as a plain address."""
        return cls(
            host=settings.host,
            port=settings.port,
            username=settings.username,
            password=settings.password,
            db=settings.db,
            tls=settings.tls,
            dial_timeout=settings.dial_timeout,
        )

    @property
    def label(self) -> str:
        """``host:port`` for messages."""
        return f"{self.host}:{self.port}"

    def handshake(self, client_name: str | None = None) -> list[Command]:
        """The commands a new connection sends before any other (``CLIENT SETNAME`` if named)."""
        commands: list[Command] = []
        if self.password:
            if self.username:
                commands.append(("AUTH", self.username, self.password))
            else:
                commands.append(("AUTH", self.password))
        if self.db:
            commands.append(("SELECT", self.db))
        if client_name:
            commands.append(("CLIENT", "SETNAME", client_name))
        return commands


@dataclass(frozen=True, slots=True)
class RedisSettings(RedisAddress):
    """How to reach Redis and how consumers maintain their streams (durations in seconds).

    ``redeliver_interval`` is how often a consumer looks for deliveries whose consumer died and
    trims its stream; ``max_len_approx`` (off unless set) caps every stream at about that many
    entries, acked or not.  A publish returns once XADD replied; with ``wait_replicas`` it also
    waits (``WAIT``) until that many replicas have it, with ``wait_aof`` (``WAITAOF``, Redis 7.2+)
    until the local AOF is fsynced, each at most ``wait_timeout`` before it raises.
    """

    read_timeout: float = 3.0
    write_timeout: float = 3.0
    redeliver_interval: float = 15.0
    max_len_approx: int | None = None
    wait_replicas: int = 0
    wait_aof: bool = False
    wait_timeout: float = 1.0

    def __post_init__(self) -> None:
        if not self.host:
            raise ConfigError("redisHost: expected host:port, got an empty host")
        if not 0 < self.port < 65536:
            raise ConfigError(f"redisHost: port {self.port} is not between 1 and 65535")
        if self.db < 0:
            raise ConfigError(f"redisDB: expected a non-negative integer, got {self.db}")
        for name, attr in _DURATIONS.items():
            if getattr(self, attr) <= 0:
                raise ConfigError(f"{name}: expected a positive duration like '30s' or ms")
        if self.wait_replicas < 0:
            raise ConfigError(
                f"waitReplicas: expected a non-negative integer, got {self.wait_replicas}"
            )
        if self.wait_timeout <= 0:
            raise ConfigError("waitTimeout: expected a positive duration like '1s' or ms")
        if self.max_len_approx is not None and self.max_len_approx < 1:
            raise ConfigError(
                f"maxLenApprox: expected a positive integer, got {self.max_len_approx}"
            )

    @property
    def address(self) -> str:
        """``host:port`` for messages."""
        return f"{self.host}:{self.port}"
