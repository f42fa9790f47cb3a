"""Settings of the RabbitMQ broker.

Built from component metadata by :mod:`components.pubsub_settings`; a value out of range raises
:class:`ConfigError` naming the metadata key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from bus.errors import ConfigError

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
_KINDS = ("fanout", "direct", "topic", "headers")


@dataclass(frozen=True, slots=True)
class RabbitSettings:
    """A ``pubsub.rabbitmq`` component; defaults are the safe ones."""

    url: str = DEFAULT_URL
    durable: bool = True
    delivery_mode: int = 2
    prefetch_count: int = 200
    enable_dead_letter: bool = False
    ttl_seconds: int | None = None
    max_len: int | None = None
    max_len_bytes: int | None = None
    reconnect_wait: float = 3.0
    exchange_kind: str = "fanout"
    # How long one connect may take; also how long a publish while the connection is down waits
    # for the reconnect before failing with BrokerUnavailable (a few seconds, not the confirm's 30).
    connect_timeout: float = 5.0

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("amqp", "amqps") or not parts.hostname:
            raise ConfigError(f"pubsub.rabbitmq: {self.url!r} is not an amqp:// or amqps:// URL")
        if self.delivery_mode not in (0, 1, 2):
            raise ConfigError("pubsub.rabbitmq deliveryMode: expected 0, 1 or 2 (persistent)")
        if self.exchange_kind not in _KINDS:
            raise ConfigError(f"pubsub.rabbitmq exchangeKind: expected one of {', '.join(_KINDS)}")
        if self.prefetch_count < 0 or self.reconnect_wait < 0:
            raise ConfigError("pubsub.rabbitmq: prefetchCount and reconnectWait must be >= 0")
        if self.connect_timeout <= 0:
            raise ConfigError("pubsub.rabbitmq: the connect time-out must be > 0")

    def queue_arguments(self, queue: str) -> dict[str, Any]:
        """Arguments of a group queue."""
        args: dict[str, Any] = {}
        if self.max_len is not None:
            args["x-max-length"] = self.max_len
        if self.max_len_bytes is not None:
            args["x-max-length-bytes"] = self.max_len_bytes
        if self.enable_dead_letter:
            args["x-dead-letter-exchange"] = f"dlx-{queue}"
        return args
