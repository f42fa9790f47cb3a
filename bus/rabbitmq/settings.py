"""Settings of the RabbitMQ broker, read from Dapr's ``pubsub.rabbitmq`` metadata names.

Parsed once into a frozen :class:`RabbitSettings`; a bad value raises :class:`ConfigError` naming
the key and what was expected.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from bus.errors import ConfigError
from bus.options import parse_duration

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
_KINDS = ("fanout", "direct", "topic", "headers")


def _bool(metadata: Mapping[str, str], key: str, default: bool) -> bool:
    value = metadata.get(key)
    if value is None or value == "":
        return default
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ConfigError(f"pubsub.rabbitmq metadata {key}: expected true or false, got {value!r}")


def _int(metadata: Mapping[str, str], key: str, default: int | None, low: int) -> int | None:
    value = metadata.get(key)
    if value is None or value == "":
        return default
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ConfigError(
            f"pubsub.rabbitmq metadata {key}: expected an integer, got {value!r}"
        ) from None
    if number < low:
        raise ConfigError(f"pubsub.rabbitmq metadata {key}: must be >= {low}, got {number}")
    return number


def _duration(metadata: Mapping[str, str], keys: Iterable[str], default: float) -> float:
    for key in keys:
        value = metadata.get(key)
        if value is not None and value != "":
            try:
                if key.endswith("Seconds") and str(value).strip().isdigit():
                    return float(str(value).strip())
                return parse_duration(value, what=f"pubsub.rabbitmq metadata {key}")
            except ValueError as exc:
                raise ConfigError(str(exc)) from exc
    return default


@dataclass(frozen=True, slots=True)
class RabbitSettings:
    """A ``pubsub.rabbitmq`` component, parsed once; defaults are the safe ones."""

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

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str]) -> RabbitSettings:
        """Settings from component metadata, with Dapr's names.

        ``consumerID``, ``processingTimeout``, ``concurrency`` and ``queueDepth`` configure
        subscriptions and are read by the components layer.  Dapr's ``autoAck``,
        ``publisherConfirm``, ``deletedWhenUnused`` and ``requeueInFailure`` are not options
        here: acks are always manual, confirms always on, queues never auto-deleted and failed
        messages always retried, since each of those Dapr defaults can lose a message.
        """
        url = metadata.get("connectionString") or metadata.get("host") or DEFAULT_URL
        return cls(
            url=str(url),
            durable=_bool(metadata, "durable", True),
            delivery_mode=_int(metadata, "deliveryMode", 2, 0) or 0,
            prefetch_count=_int(metadata, "prefetchCount", 200, 0) or 0,
            enable_dead_letter=_bool(metadata, "enableDeadLetter", False),
            ttl_seconds=_int(metadata, "ttlInSeconds", None, 1),
            max_len=_int(metadata, "maxLen", None, 1),
            max_len_bytes=_int(metadata, "maxLenBytes", None, 1),
            reconnect_wait=_duration(metadata, ["reconnectWait", "reconnectWaitSeconds"], 3.0),
            exchange_kind=str(metadata.get("exchangeKind") or "fanout").lower(),
        )

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
