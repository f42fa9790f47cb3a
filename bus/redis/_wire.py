"""Messages as Redis stream entries and inbox replies, and Redis errors as ours."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import hiredis
import orjson
import tenacity
from redis import exceptions as rexc
from redis.asyncio import Redis
from redis.asyncio.connection import Connection, SSLConnection

from bus.errors import BrokerError, BrokerUnavailable
from bus.message import STORED_MS, Message
from bus.redis.link import RECONNECT
from bus.rpc import MODE_KEY, RequestMode

log = logging.getLogger("omnibus.bus.redis")

META_ID = "omnibus-id"
META_REPLY_TO = "omnibus-reply-to"
META_CORRELATION = "omnibus-correlation-id"
NETWORK_ERRORS = (rexc.ConnectionError, rexc.TimeoutError, OSError)


class _HiredisPacking:
    """Commands packed by hiredis's C packer: redis-py's sync client does so when hiredis is
    installed, its asyncio client packs in Python (a tenth of a publishing sidecar's CPU in a
    profile).  Arguments hiredis does not take (bytearray, bool, None) go to redis-py's own
    packer, which packs or rejects them as it always does."""

    def pack_command(self, *args: Any) -> list[bytes]:
        head = args[0]
        if isinstance(head, str):
            args = (*head.encode().split(), *args[1:])
        elif b" " in head:
            args = (*head.split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError:
            return super().pack_command(*args)  # type: ignore[misc, no-any-return]


class PackedConnection(_HiredisPacking, Connection):
    """A TCP connection whose commands hiredis packs."""


class PackedSSLConnection(_HiredisPacking, SSLConnection):
    """A TLS connection whose commands hiredis packs."""


def encode(message: Message) -> tuple[bytes, bytes]:
    """The ``data`` and ``metadata`` fields of a stream entry for ``message``."""
    meta = dict(message.metadata)
    meta[META_ID] = message.id
    if message.reply_to:
        meta[META_REPLY_TO] = message.reply_to
    if message.correlation_id:
        meta[META_CORRELATION] = message.correlation_id
    return message.data, orjson.dumps(meta)


_CALL = RequestMode.CALL.value


def decode(topic: str, entry_id: bytes, fields: Mapping[bytes, bytes], attempt: int) -> Message:
    """The message of a stream entry, ours or Dapr's (``data`` only)."""
    raw = fields.get(b"metadata")
    meta: Any = {}
    if raw:
        try:
            meta = orjson.loads(raw)
        except orjson.JSONDecodeError:
            log.warning("entry %s of %s has unreadable metadata", entry_id, topic)
        if not isinstance(meta, dict):
            meta = {}
    message_id = meta.pop(META_ID, None)
    reply_to = meta.pop(META_REPLY_TO, None)
    correlation_id = meta.pop(META_CORRELATION, None)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        meta = {str(k): v if isinstance(v, str) else str(v) for k, v in meta.items()}
    if meta.get(MODE_KEY) == _CALL:  # the entry id's milliseconds: stored then, on Redis' clock
        meta[STORED_MS] = entry_id.partition(b"-")[0].decode()
    return Message(
        data=fields.get(b"data", b""),
        metadata=MappingProxyType(meta),  # checked above: str to str, no second pass
        id=message_id if isinstance(message_id, str) and message_id else entry_id.decode(),
        topic=topic,
        attempt=max(attempt, 1),
        reply_to=reply_to if isinstance(reply_to, str) else None,
        correlation_id=correlation_id if isinstance(correlation_id, str) else None,
    )


async def call_raw(client: Redis, *args: Any) -> Any:
    """One raw command (its reply as redis-py parses it)."""
    return await client.execute_command(*args)  # type: ignore[no-untyped-call]


def pairs(flat: Sequence[bytes]) -> dict[bytes, bytes]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def translate(exc: Exception, doing: str) -> BrokerError:
    if isinstance(exc, NETWORK_ERRORS):
        return BrokerUnavailable(f"Redis unreachable while {doing}: {exc}")
    return BrokerError(f"Redis failed while {doing}: {exc}")


# What a lost connection raises: redis-py's errors, and the lean link's BrokerUnavailable.
LINK_ERRORS = (*NETWORK_ERRORS, BrokerUnavailable)


def reconnecting(what: str, give_up_after: float | None = None) -> tenacity.AsyncRetrying:
    """Retry on a lost connection with exponential backoff (forever, or ``give_up_after`` s)."""
    return RECONNECT.retrying(
        f"Redis: {what}", on=LINK_ERRORS, give_up_after=give_up_after, logger=log
    )


def encode_reply(reply: Message) -> bytes:
    header = {
        "id": reply.id,
        "correlation_id": reply.correlation_id,
        "metadata": dict(reply.metadata),
    }
    return orjson.dumps(header) + b"\n" + reply.data


def decode_reply(payload: bytes) -> Message:
    header, _, data = payload.partition(b"\n")
    fields = orjson.loads(header)
    return Message(
        data=data,
        metadata=fields.get("metadata") or {},
        id=fields["id"],
        correlation_id=fields.get("correlation_id"),
    )
