"""RabbitMQ object names, and our messages on the AMQP wire: properties out, decoding in,
publishing a batch with every publisher confirm awaited.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

import aiormq
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel
from pamqp import commands as spec

from bus.errors import BrokerUnavailable, InvalidArgument, InvalidName, PublishError
from bus.message import Message, new_id
from bus.rabbitmq.settings import RabbitSettings

ATTEMPT_HEADER = "omnibus-attempt"
REPLY_TO = "amq.rabbitmq.reply-to"
# Delay queues, in ms; a retry waits on the smallest rung >= the wanted delay.  Each rung is at
# most 2.5 times the one below, so a backoff of at least 100 ms is never shortened and at most
# 2.5 times longer; shorter ones wait 100 ms, longer than the top rung (30 min) are capped at it.
RETRY_LADDER_MS = (
    100,
    250,
    500,
    1000,
    2500,
    5000,
    10_000,
    25_000,
    60_000,
    150_000,
    300_000,
    750_000,
    1_800_000,
)
EXPIRE_AFTER_MS = 3_600_000
# How long a publish that RabbitMQ received may wait for its confirm.  A publish to a connection
# known to be down never gets that far: it waits for the reconnect only as long as a connect may
# take (``RabbitSettings.connect_timeout``), then fails with BrokerUnavailable (see ``ready``).
PUBLISH_TIMEOUT = 30.0
# Bounds what may wait for a reconnect on the way out (and presence messages, which expire anyway)
CLOSE_TIMEOUT = 2.0
_DEATH_HEADERS = ("x-death", "x-first-death-", "x-last-death-")
_MAX_NAME = 255


def queue_name(group: str, topic: str) -> str:
    """The queue of ``group`` on ``topic`` (Dapr's ``<consumerID>-<topic>``)."""
    return checked(f"{group}-{topic}")


def held_name(topic: str) -> str:
    """The exchange and queue that keep messages published while no group is bound."""
    return checked(f"{topic}@held")


def retry_queue_name(queue: str, ms: int) -> str:
    """The delay queue of ``queue`` for the rung of ``ms`` milliseconds."""
    return checked(f"{queue}@retry@{ms}")


def retry_rung(delay: float) -> int:
    """The ladder rung (ms) a retry wanted after ``delay`` seconds waits on; 0 = no wait."""
    wanted = delay * 1000.0
    if wanted <= 0:
        return 0
    return next((ms for ms in RETRY_LADDER_MS if ms >= wanted), RETRY_LADDER_MS[-1])


def checked(name: str) -> str:
    if len(name.encode()) > _MAX_NAME:
        raise InvalidName(f"RabbitMQ names are limited to 255 bytes: {name[:40]!r}... is longer")
    return name


def _header_text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else str(value)


def decode(raw: AbstractIncomingMessage, topic: str, *, count_redelivery: bool = True) -> Message:
    """Our message from an AMQP delivery; foreign messages without a message id get a fresh one."""
    metadata: dict[str, str] = {}
    attempt = 1
    for key, value in (raw.headers or {}).items():
        if key == ATTEMPT_HEADER:
            with contextlib.suppress(TypeError, ValueError):
                attempt = max(1, int(_header_text(value)))
        elif not key.startswith(_DEATH_HEADERS):
            metadata[key] = _header_text(value)
    if count_redelivery and raw.redelivered:
        attempt += 1
    return Message(
        data=raw.body,
        metadata=metadata,
        id=raw.message_id or new_id(),
        topic=topic,
        attempt=attempt,
        reply_to=raw.reply_to,
        correlation_id=raw.correlation_id,
    )


def properties(
    message: Message, reply_to: str | None, settings: RabbitSettings, ttl: float | None = None
) -> spec.Basic.Properties:
    """The AMQP properties of ``message``: id, metadata as headers, attempt, expiration.

    With ``ttl`` (a call's time-to-live, seconds) the message is transient and expires then.
    """
    # a first attempt needs no header (absent means 1): less to encode on the hot path
    metadata = message.metadata
    headers: dict[str, Any] | None = dict(metadata) if metadata else None
    if message.attempt > 1:
        headers = headers or {}
        headers[ATTEMPT_HEADER] = message.attempt
    return spec.Basic.Properties(
        delivery_mode=1 if ttl is not None else settings.delivery_mode or 1,
        message_id=message.id,
        headers=headers,
        correlation_id=message.correlation_id,
        reply_to=reply_to,
        expiration=str(max(1, int(ttl * 1000)))
        if ttl is not None
        else expiration(metadata, settings),
    )


def expiration(metadata: Mapping[str, str], settings: RabbitSettings) -> str | None:
    """Per-message ``ttlInSeconds`` metadata, else the component's, as AMQP expiration (ms)."""
    ttl: object = metadata.get("ttlInSeconds") or settings.ttl_seconds
    if not ttl:
        return None
    try:
        seconds = int(str(ttl))
    except ValueError:
        raise InvalidArgument(f"ttlInSeconds must be a whole number, not {ttl!r}") from None
    if seconds < 1:
        raise InvalidArgument("ttlInSeconds must be positive")
    return str(seconds * 1000)


async def ready(channel: AbstractRobustChannel, wait: float) -> aiormq.abc.AbstractChannel:
    """The open AMQP channel under ``channel``; BrokerUnavailable if it is not back within ``wait``.

    While the robust connection reconnects, aio-pika would hold every operation until the channel
    is restored, however long that takes; a caller that cannot be served should hear so soon.
    """
    try:
        if channel.is_closed:  # the connection (or the channel) is down: a reconnect is under way
            async with asyncio.timeout(wait):
                await channel.ready()
        return await channel.get_underlay_channel()
    except TimeoutError:
        raise BrokerUnavailable(
            f"RabbitMQ is not connected (not reconnected within {wait:g}s)"
        ) from None
    except (aiormq.exceptions.ChannelInvalidStateError, aiormq.exceptions.AMQPError) as exc:
        raise BrokerUnavailable(f"RabbitMQ is not connected: {exc}") from exc


async def send(
    channel: AbstractRobustChannel,
    exchange: str,
    routing_key: str,
    batch: Sequence[Message],
    settings: RabbitSettings,
    *,
    mandatory: bool,
    ttl: float | None = None,
) -> None:
    """Publish ``batch`` at once and wait for every confirm; raise if any is missing.

    ``ttl`` makes the messages transient calls that expire after that many seconds.  While the
    connection is down, BrokerUnavailable once it is not back within the connect time-out.
    """
    # Every message's properties first: one that cannot be sent (a bad ttlInSeconds) raises here,
    # before any publish coroutine exists that would then be left un-awaited.
    props = [properties(m, m.reply_to, settings, ttl) for m in batch]
    underlay = await ready(channel, settings.connect_timeout)
    try:
        async with asyncio.timeout(PUBLISH_TIMEOUT):
            results = await asyncio.gather(
                *(
                    underlay.basic_publish(
                        m.data,
                        exchange=exchange,
                        routing_key=routing_key,
                        properties=p,
                        mandatory=mandatory,
                    )
                    for m, p in zip(batch, props, strict=True)
                ),
                return_exceptions=True,
            )
    except TimeoutError as exc:
        raise PublishError(f"no confirm from RabbitMQ within {PUBLISH_TIMEOUT:g}s") from exc
    except (aiormq.exceptions.AMQPError, ConnectionError) as exc:
        raise PublishError(f"publishing to {exchange!r} failed: {exc}") from exc
    failed = [r for r in results if not isinstance(r, spec.Basic.Ack)]
    if failed:
        first = failed[0]
        target = f"exchange {exchange!r}" if exchange else f"queue {routing_key!r}"
        raise PublishError(
            f"{len(failed)} of {len(batch)} messages to {target} were not confirmed: {first!r}"
        ) from (first if isinstance(first, BaseException) else None)
