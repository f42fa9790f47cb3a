"""Settings of the Redis Streams broker, read from Dapr's ``pubsub.redis`` metadata names.

Parsed once into a frozen :class:`RedisSettings`; a bad value raises :class:`ConfigError` naming
the field and what was expected.  Durations take Go-style strings (``30s``, ``1m``) or a bare
number of milliseconds, for every duration field: Dapr silently ignored ``redeliverInterval: 30s``,
omnibus does not.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bus.errors import ConfigError, InvalidArgument
from bus.options import SubscriptionOptions, parse_duration

DEFAULT_PORT = 6379

# Go's strconv.ParseBool, which Dapr uses for boolean metadata.
_TRUE = frozenset({"1", "t", "T", "true", "TRUE", "True"})
_FALSE = frozenset({"0", "f", "F", "false", "FALSE", "False"})

_DURATIONS = {
    "dialTimeout": "dial_timeout",
    "readTimeout": "read_timeout",
    "writeTimeout": "write_timeout",
    "processingTimeout": "processing_timeout",
    "redeliverInterval": "redeliver_interval",
}


@dataclass(frozen=True, slots=True)
class RedisSettings:
    """How to reach Redis and how subscriptions consume (durations in seconds).

    ``processing_timeout``, ``queue_depth`` and ``concurrency`` are the defaults of the
    subscriptions made with :meth:`subscription_options`; ``redeliver_interval`` is how often a
    consumer looks for deliveries whose consumer died and trims its stream; ``max_len_approx``
    (off unless set) caps every stream at about that many entries, acked or not.
    """

    host: str = "localhost"
    port: int = DEFAULT_PORT
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    db: int = 0
    tls: bool = False
    dial_timeout: float = 5.0
    read_timeout: float = 3.0
    write_timeout: float = 3.0
    processing_timeout: float = 60.0
    redeliver_interval: float = 15.0
    queue_depth: int = 100
    concurrency: int = 10
    max_len_approx: int | None = None

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
        for name, value in (("queueDepth", self.queue_depth), ("concurrency", self.concurrency)):
            if value < 1:
                raise ConfigError(f"{name}: expected a positive integer, got {value}")
        if self.max_len_approx is not None and self.max_len_approx < 1:
            raise ConfigError(
                f"maxLenApprox: expected a positive integer, got {self.max_len_approx}"
            )

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str]) -> RedisSettings:
        """Settings from a component's metadata, with Dapr's names and defaults."""
        values: dict[str, Any] = {}
        if "redisHost" in metadata:
            values["host"], values["port"] = _host_port(metadata["redisHost"])
        if metadata.get("redisType", "node").lower() != "node":
            raise ConfigError("redisType: only 'node' is supported (no cluster or sentinel)")
        if metadata.get("redisUsername"):
            values["username"] = metadata["redisUsername"]
        if metadata.get("redisPassword"):
            values["password"] = metadata["redisPassword"]
        if "redisDB" in metadata:
            values["db"] = _integer(metadata, "redisDB", minimum=0)
        if "enableTLS" in metadata:
            values["tls"] = _boolean(metadata, "enableTLS")
        for name, attr in _DURATIONS.items():
            if name in metadata:
                values[attr] = _duration(metadata, name)
        if "queueDepth" in metadata:
            values["queue_depth"] = _integer(metadata, "queueDepth", minimum=1)
        if "concurrency" in metadata:
            values["concurrency"] = _integer(metadata, "concurrency", minimum=1)
        if metadata.get("maxLenApprox"):  # 0 means no cap, as in Dapr
            cap = _integer(metadata, "maxLenApprox", minimum=0)
            values["max_len_approx"] = cap or None
        return cls(**values)

    def subscription_options(self, group: str, **overrides: Any) -> SubscriptionOptions:
        """Subscription options with this component's concurrency, queue depth and time-out."""
        defaults: dict[str, Any] = {
            "concurrency": self.concurrency,
            "batch_size": self.queue_depth,
            "processing_timeout": self.processing_timeout,
        }
        return SubscriptionOptions(group=group, **{**defaults, **overrides})

    @property
    def address(self) -> str:
        """``host:port`` for messages."""
        return f"{self.host}:{self.port}"


def _host_port(value: str) -> tuple[str, int]:
    text = value.strip()
    if not text:
        raise ConfigError("redisHost: expected host:port, got an empty value")
    if text.startswith("["):  # [::1]:6379
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, ""
    if not port_text:
        return host, DEFAULT_PORT
    if not port_text.isdigit():
        raise ConfigError(f"redisHost: expected host:port with a numeric port, got {value!r}")
    return host, int(port_text)


def _integer(metadata: Mapping[str, str], name: str, *, minimum: int) -> int:
    text = str(metadata[name]).strip()
    try:
        number = int(text)
    except ValueError:
        number = minimum - 1
    if number < minimum:
        what = "a non-negative" if minimum == 0 else "a positive"
        raise ConfigError(f"{name}: expected {what} integer, got {metadata[name]!r}")
    return number


def _boolean(metadata: Mapping[str, str], name: str) -> bool:
    text = str(metadata[name]).strip()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(f"{name}: expected true or false, got {metadata[name]!r}")


def _duration(metadata: Mapping[str, str], name: str) -> float:
    try:
        seconds = parse_duration(metadata[name], what=name)
    except InvalidArgument as exc:
        raise ConfigError(str(exc)) from exc
    if seconds <= 0:
        raise ConfigError(f"{name}: expected a positive duration like '30s' or ms, got 0")
    return seconds
