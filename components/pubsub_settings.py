"""Dapr pubsub component metadata -> each backend's typed settings: the one place that reads them.

Every backend key keeps Dapr's name; a bad value raises :class:`~bus.errors.ConfigError` naming
the key and what was expected (the registry prefixes the file and the component).  Booleans take
Dapr's vocabulary (:func:`bus.options.parse_bool`), durations Go-style strings (``30s``,
``1m30s``) or a bare number of milliseconds, for every duration key (Dapr silently ignored
``redeliverInterval: 30s``; omnibus does not).  Keys every type shares (``consumerID``,
``concurrency``, ``queueDepth``, ``processingTimeout``) are read by
:func:`components.registry.read_defaults`, not here.

- ``pubsub.redis``: ``redisHost`` (``host:port``, ``[v6]:port``), ``redisType`` (``node`` only),
  ``redisUsername``, ``redisPassword``, ``redisDB``, ``enableTLS``, ``dialTimeout``,
  ``readTimeout``, ``writeTimeout``, ``redeliverInterval``, ``maxLenApprox`` (0 = no cap),
  ``waitReplicas``, ``waitAOF``, ``waitTimeout`` (what a publish waits for beyond XADD's reply).
- ``pubsub.sqlite``: ``connectionString`` (the file; default ``<home>/bus.db``),
  ``redeliverInterval``, ``minPollInterval``, ``maxPollInterval``, ``busyTimeout``,
  ``maxLenApprox``.
- ``pubsub.rabbitmq``: ``connectionString`` (or ``host``), ``durable``, ``deliveryMode``,
  ``prefetchCount``, ``enableDeadLetter``, ``ttlInSeconds``, ``maxLen``, ``maxLenBytes``,
  ``reconnectWait`` (or ``reconnectWaitSeconds``), ``exchangeKind``.  Dapr's ``autoAck``,
  ``publisherConfirm``, ``deletedWhenUnused`` and ``requeueInFailure`` are not options: acks are
  always manual, confirms always on, queues never auto-deleted and failed messages always
  retried, since each of those Dapr defaults can lose a message.

Each backend's settings module is imported inside its parser so that a sidecar loads only the
client library of the backends its components use.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bus.errors import ConfigError, InvalidArgument
from bus.options import parse_bool, parse_duration

if TYPE_CHECKING:
    from bus.rabbitmq.settings import RabbitSettings
    from bus.redis.settings import RedisSettings
    from bus.sqlite.settings import SqliteSettings

__all__ = ["MetadataReader", "rabbit_settings", "redis_settings", "sqlite_settings"]


@dataclass(frozen=True, slots=True)
class MetadataReader:
    """Typed reads of one component's metadata; a missing or empty key reads as None."""

    metadata: Mapping[str, str]

    def text(self, *keys: str) -> str | None:
        """The first of ``keys`` with a non-blank value, stripped."""
        for key in keys:
            value = self.metadata.get(key)
            if value is not None and str(value).strip():
                return str(value).strip()
        return None

    def integer(self, key: str, *, minimum: int) -> int | None:
        """An integer of at least ``minimum``."""
        text = self.text(key)
        if text is None:
            return None
        try:
            number = int(text)
        except ValueError:
            number = minimum - 1
        if number < minimum:
            what = {0: "a non-negative integer", 1: "a positive integer"}.get(
                minimum, f"an integer >= {minimum}"
            )
            raise ConfigError(f"{key}: expected {what}, got {self.metadata[key]!r}")
        return number

    def boolean(self, key: str) -> bool | None:
        """A boolean in Dapr's vocabulary."""
        text = self.text(key)
        return None if text is None else parse_bool(text, what=key)

    def duration(self, key: str, *, allow_zero: bool = False) -> float | None:
        """A positive (or, with ``allow_zero``, non-negative) duration in seconds."""
        text = self.text(key)
        if text is None:
            return None
        try:
            seconds = parse_duration(text, what=key)
        except InvalidArgument as exc:
            raise ConfigError(str(exc)) from exc
        if seconds < 0 or (seconds == 0 and not allow_zero):
            raise ConfigError(f"{key}: expected a positive duration like '30s' or ms, got {text!r}")
        return seconds


def _given(**values: Any) -> dict[str, Any]:
    """The keyword arguments that were set, so the dataclass defaults apply to the rest."""
    return {name: value for name, value in values.items() if value is not None}


def redis_settings(metadata: Mapping[str, str]) -> RedisSettings:
    """``pubsub.redis`` metadata -> :class:`~bus.redis.settings.RedisSettings`."""
    from bus.redis.settings import DEFAULT_PORT, RedisSettings

    read = MetadataReader(metadata)
    if (read.text("redisType") or "node").lower() != "node":
        raise ConfigError("redisType: only 'node' is supported (no cluster or sentinel)")
    host_port = read.text("redisHost")
    host, port = _host_port(host_port, DEFAULT_PORT) if host_port is not None else (None, None)
    cap = read.integer("maxLenApprox", minimum=0)
    return RedisSettings(
        **_given(
            host=host,
            port=port,
            username=read.text("redisUsername"),
            password=read.text("redisPassword"),
            db=read.integer("redisDB", minimum=0),
            tls=read.boolean("enableTLS"),
            dial_timeout=read.duration("dialTimeout"),
            read_timeout=read.duration("readTimeout"),
            write_timeout=read.duration("writeTimeout"),
            redeliver_interval=read.duration("redeliverInterval"),
            max_len_approx=cap or None,  # 0 means no cap, as in Dapr
            wait_replicas=read.integer("waitReplicas", minimum=0),
            wait_aof=read.boolean("waitAOF"),
            wait_timeout=read.duration("waitTimeout"),
        )
    )


def _host_port(text: str, default_port: int) -> tuple[str, int]:
    if text.startswith("["):  # [::1]:6379
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, ""
    if not port_text:
        return host, default_port
    if not port_text.isdigit():
        raise ConfigError(f"redisHost: expected host:port with a numeric port, got {text!r}")
    return host, int(port_text)


def sqlite_settings(metadata: Mapping[str, str], *, home: Path | None = None) -> SqliteSettings:
    """``pubsub.sqlite`` metadata -> :class:`~bus.sqlite.settings.SqliteSettings`."""
    from bus.sqlite.settings import SqliteSettings, default_path

    read = MetadataReader(metadata)
    connection = read.text("connectionString")
    return SqliteSettings(
        path=_sqlite_path(connection) if connection is not None else default_path(home),
        **_given(
            redeliver_interval=read.duration("redeliverInterval"),
            min_poll_interval=read.duration("minPollInterval"),
            max_poll_interval=read.duration("maxPollInterval"),
            busy_timeout=read.duration("busyTimeout", allow_zero=True),
            max_len=read.integer("maxLenApprox", minimum=1),
        ),
    )


def _sqlite_path(text: str) -> Path:
    path = text.removeprefix("file:")
    if "?" in path or path == ":memory:" or not path:
        raise ConfigError(
            f"connectionString: {text!r} is not a database file path (expected e.g. "
            "'~/.omnibus/bus.db'; URI parameters and ':memory:' are not supported)"
        )
    return Path(path).expanduser()


def rabbit_settings(metadata: Mapping[str, str]) -> RabbitSettings:
    """``pubsub.rabbitmq`` metadata -> :class:`~bus.rabbitmq.settings.RabbitSettings`."""
    from bus.rabbitmq.settings import RabbitSettings

    read = MetadataReader(metadata)
    kind = read.text("exchangeKind")
    return RabbitSettings(
        **_given(
            url=read.text("connectionString", "host"),
            durable=read.boolean("durable"),
            delivery_mode=read.integer("deliveryMode", minimum=0),
            prefetch_count=read.integer("prefetchCount", minimum=0),
            enable_dead_letter=read.boolean("enableDeadLetter"),
            ttl_seconds=read.integer("ttlInSeconds", minimum=1),
            max_len=read.integer("maxLen", minimum=1),
            max_len_bytes=read.integer("maxLenBytes", minimum=1),
            reconnect_wait=_reconnect_wait(read),
            exchange_kind=kind.lower() if kind is not None else None,
        )
    )


def _reconnect_wait(read: MetadataReader) -> float | None:
    seconds = read.text("reconnectWaitSeconds")
    if read.text("reconnectWait") is None and seconds is not None and seconds.isdigit():
        return float(seconds)  # Dapr's reconnectWaitSeconds is a bare number of seconds
    wait = read.duration("reconnectWait", allow_zero=True)
    return wait if wait is not None else read.duration("reconnectWaitSeconds", allow_zero=True)
