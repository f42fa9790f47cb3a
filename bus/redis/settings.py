"""Settings of the Redis Streams broker, and the address both Redis components start with.

Built from component metadata by :mod:`components.pubsub_settings` (and, for ``state.redis``,
:mod:`state.settings`), both through :func:`address_metadata`; a value out of range raises
:class:`ConfigError` naming the metadata key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bus.errors import ConfigError
from bus.metadata import MetadataReader, given

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


def address_metadata(read: MetadataReader, *, host_required: bool) -> dict[str, Any]:
    """The :class:`RedisAddress` fields that a Redis component's metadata sets, by field name:
    ``redisHost`` (``host``, ``host:port``, ``[v6]:port``; the port defaults to 6379),
    ``redisUsername``, ``redisPassword``, ``redisDB``, ``enableTLS`` and ``dialTimeout`` (0
    means the default, as in Dapr).  ``redisType`` must be ``node`` and ``failover`` off: no
    cluster or sentinel.  Without ``host_required`` a missing ``redisHost`` leaves the default."""
    if (read.text("redisType") or "node").lower() != "node" or read.boolean("failover"):
        raise read.fail("redisType", "node (cluster and sentinel are not supported)")
    fields: dict[str, Any] = {}
    host_port = read.text("redisHost")
    if host_port is not None:
        fields["host"], fields["port"] = _host_port(read, host_port)
    elif host_required:
        raise read.fail("redisHost", "host:port of the server (it is required)")
    return fields | given(
        username=read.text("redisUsername"),
        password=read.text("redisPassword"),
        db=read.integer("redisDB", minimum=0),
        tls=read.boolean("enableTLS"),
        dial_timeout=read.duration("dialTimeout", allow_zero=True) or None,
    )


def _host_port(read: MetadataReader, text: str) -> tuple[str, int]:
    if text.startswith("["):  # [::1]:6379
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:  # a host alone, or a bare IPv6 address
        host, port_text = text, ""
    if not port_text:
        port_text = str(DEFAULT_PORT)
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise read.fail("redisHost", "host:port with a port between 1 and 65535")
    return host, int(port_text)


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
