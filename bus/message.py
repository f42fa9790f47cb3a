"""Messages, outcomes and the validation of the names that address them."""

from __future__ import annotations

import enum
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from bus.errors import InvalidArgument, InvalidName

# Topics may contain '/', '.', ':' (Dapr takes the rest of the URL path as the topic), but never
# whitespace, control characters or wildcards that would mean something to Redis or RabbitMQ.
_TOPIC = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:/\-]{0,199}")
# Groups, app ids and instance names become parts of queue names and keys: stricter.
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}")

_EMPTY: Mapping[str, str] = MappingProxyType({})


def validate_topic(topic: object) -> str:
    """Return ``topic`` if it is a valid topic name, else raise :class:`InvalidName`."""
    if not isinstance(topic, str) or not topic:
        raise InvalidName("topic name must be a non-empty string")
    if not _TOPIC.fullmatch(topic):
        raise InvalidName(
            f"invalid topic name {topic!r}: use at most 200 of A-Z a-z 0-9 _ . : / -, "
            "starting with a letter, digit or underscore"
        )
    return topic


def validate_name(name: object, what: str = "name") -> str:
    """Return ``name`` if it is a valid group, app id or instance name, else raise."""
    if not isinstance(name, str) or not name:
        raise InvalidName(f"{what} must be a non-empty string")
    if not _NAME.fullmatch(name):
        raise InvalidName(
            f"invalid {what} {name!r}: use at most 128 of A-Z a-z 0-9 _ . -, "
            "starting with a letter, digit or underscore"
        )
    return name


def new_id() -> str:
    """A fresh, unique message id: 128 random bits as 32 hex digits (the form of uuid4().hex).

    From the process's seeded PRNG (reseeded in a forked child), not ``uuid4``'s read of
    ``os.urandom``: an id must be unique, not secret, and every message makes one.
    """
    return f"{random.getrandbits(128):032x}"


_VERSION_MASK = ~(0xF000 << 64) & ~(0xC000 << 48)
_VERSION_BITS = (0x4000 << 64) | (0x8000 << 48)


def new_uuid() -> str:
    """A random (version 4) UUID in its 36-character form, from the same seeded PRNG as
    :func:`new_id`: for ids that other systems expect in that form (CloudEvent ids, etags)."""
    bits = f"{random.getrandbits(128) & _VERSION_MASK | _VERSION_BITS:032x}"
    return f"{bits[:8]}-{bits[8:12]}-{bits[12:16]}-{bits[16:20]}-{bits[20:]}"


# Metadata a backend adds to a call it hands to a server: when the broker stored it, in unix ms
# on the broker's clock, so the server can tell how long the call waited (see stored_age).
STORED_MS = "omnibus-stored-ms"


def stored_age(
    message: Message, clock_offset_ms: float = 0.0, clock: Callable[[], float] = time.time
) -> float | None:
    """Seconds since the broker stored ``message`` (its clock = ``clock()`` + ``clock_offset_ms``,
    ``clock`` in seconds: the wall clock by default, the monotonic one for an offset measured
    against it)."""
    stored = message.metadata.get(STORED_MS)
    if stored is None:
        return None
    try:
        since = clock() * 1000 + clock_offset_ms - int(stored)
    except ValueError:
        return None
    return max(0.0, since / 1000)


class Outcome(enum.Enum):
    """What a handler decided about one message."""

    SUCCESS = "SUCCESS"  # ack
    RETRY = "RETRY"  # redeliver after a backoff, dead-letter after maxAttempts
    DROP = "DROP"  # ack and publish to the dead-letter topic


@dataclass(frozen=True, slots=True)
class Message:
    """One message on the bus.

    ``attempt`` is 1 on the first delivery and grows with every redelivery of the same ``id``.
    ``reply_to`` and ``correlation_id`` are set on requests of request/reply.
    """

    data: bytes
    metadata: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    id: str = field(default_factory=new_id)
    topic: str = ""
    attempt: int = 1
    reply_to: str | None = None
    correlation_id: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.data, bytes | bytearray | memoryview):
            raise InvalidArgument(f"message data must be bytes, not {type(self.data).__name__}")
        if not isinstance(self.data, bytes):
            object.__setattr__(self, "data", bytes(self.data))
        if not isinstance(self.id, str) or not self.id:
            raise InvalidArgument("message id must be a non-empty string")
        if not isinstance(self.metadata, MappingProxyType):
            metadata = dict(self.metadata)
            for key, value in metadata.items():
                if not isinstance(key, str) or not isinstance(value, str):
                    raise InvalidArgument("message metadata must map str to str")
            object.__setattr__(self, "metadata", MappingProxyType(metadata))
        if self.attempt < 1:
            raise InvalidArgument("message attempt starts at 1")
