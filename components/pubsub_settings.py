"""Dapr pubsub component metadata -> each backend's typed settings: the one place that reads them.

Every backend key keeps Dapr's name and, as in Dapr, matches in any case; values are read by
:class:`bus.metadata.MetadataReader`, and a bad one raises :class:`~bus.errors.ConfigError`
naming the key and what was expected (the registry prefixes the file and the component).
Booleans take Dapr's vocabulary, durations Go-style strings (``30s``, ``1m30s``) or a bare number
of milliseconds, for every duration key (Dapr silently ignored ``redeliverInterval: 30s``;
omnibus does not).  Keys every type shares (``consumerID``,
``concurrency``, ``queueDepth``, ``processingTimeout``) are read by
:func:`components.registry.read_defaults`, not here.

- ``pubsub.redis``: the address keys that ``state.redis`` reads too
  (:func:`bus.redis.settings.address_metadata`: ``redisHost``, ``redisType`` (``node`` only),
  ``redisUsername``, ``redisPassword``, ``redisDB``, ``enableTLS``, ``dialTimeout``), then
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
from pathlib import Path
from typing import TYPE_CHECKING

from bus.errors import ConfigError
from bus.metadata import MetadataReader, given

if TYPE_CHECKING:
    from bus.rabbitmq.settings import RabbitSettings
    from bus.redis.settings import RedisSettings
    from bus.sqlite.settings import SqliteSettings

__all__ = ["rabbit_settings", "redis_settings", "sqlite_settings"]


def redis_settings(metadata: Mapping[str, str]) -> RedisSettings:
    """``pubsub.redis`` metadata -> :class:`~bus.redis.settings.RedisSettings`."""
    from bus.redis.settings import RedisSettings, address_metadata

    read = MetadataReader(metadata)
    cap = read.integer("maxLenApprox", minimum=0)
    return RedisSettings(
        **address_metadata(read, host_required=False),
        **given(
            read_timeout=read.duration("readTimeout"),
            write_timeout=read.duration("writeTimeout"),
            redeliver_interval=read.duration("redeliverInterval"),
            max_len_approx=cap or None,  # 0 means no cap, as in Dapr
            wait_replicas=read.integer("waitReplicas", minimum=0),
            wait_aof=read.boolean("waitAOF"),
            wait_timeout=read.duration("waitTimeout"),
        ),
    )


def sqlite_settings(metadata: Mapping[str, str], *, home: Path | None = None) -> SqliteSettings:
    """``pubsub.sqlite`` metadata -> :class:`~bus.sqlite.settings.SqliteSettings`."""
    from bus.sqlite.settings import SqliteSettings, default_path

    read = MetadataReader(metadata)
    connection = read.text("connectionString")
    return SqliteSettings(
        path=_sqlite_path(connection) if connection is not None else default_path(home),
        **given(
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
        **given(
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
