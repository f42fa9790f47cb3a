"""Typed, frozen options of subscriptions and their retry policy."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from bus.backoff import Backoff
from bus.errors import ConfigError, InvalidArgument
from bus.message import validate_name, validate_topic

FOREVER = -1

_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)(h|ms|m|s|us|µs|ns))+")
_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s|us|µs|ns)")
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


# Dapr's boolean vocabulary (its utils.IsTruthy and strconv.ParseBool together), any case.
_TRUE = frozenset({"1", "t", "true", "y", "yes", "on"})
_FALSE = frozenset({"0", "f", "false", "n", "no", "off"})


def parse_bool(value: str, *, what: str) -> bool:
    """A boolean in Dapr's vocabulary, any case and spacing; else a ConfigError naming ``what``."""
    text = value.strip().lower() if isinstance(value, str) else None
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(
        f"{what}: expected a boolean (true/false, yes/no, on/off, 1/0, t/f, y/n), got {value!r}"
    )


def parse_duration(value: object, *, what: str = "duration") -> float:
    """Seconds from a Go-style duration (``1m30s``, ``500ms``) or a bare number of milliseconds.

    Dapr's components take both spellings; a bare number means milliseconds, as in Dapr.
    """
    if isinstance(value, bool):
        raise InvalidArgument(f"{what}: expected a duration like '30s' or milliseconds")
    if isinstance(value, int | float):
        seconds = float(value) / 1000.0
    elif isinstance(value, str) and value.strip():
        text = value.strip()
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            seconds = float(text) / 1000.0
        elif _DURATION.fullmatch(text):
            seconds = sum(float(n) * _UNITS[u] for n, u in _PART.findall(text))
        else:
            raise InvalidArgument(
                f"{what}: {value!r} is not a duration (expected e.g. '30s', '1m30s', '500ms' "
                "or a number of milliseconds)"
            )
    else:
        raise InvalidArgument(f"{what}: expected a duration like '30s' or milliseconds")
    if not math.isfinite(seconds):  # .nan from YAML, or so many digits that it overflowed
        raise InvalidArgument(f"{what}: {value!r} is not a finite duration")
    if seconds < 0:
        raise InvalidArgument(f"{what} must not be negative")
    return seconds


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When a RETRY is redelivered, and after how many attempts it is dead-lettered.

    Waits grow exponentially from ``initial_interval`` by ``multiplier`` up to ``max_interval``,
    with up to ``jitter`` seconds of random jitter (capped at ``max_interval``): the curve of
    :class:`bus.backoff.Backoff`.
    ``max_attempts`` counts deliveries (the first one included); ``-1`` retries forever.
    """

    max_attempts: int = 10
    initial_interval: float = 0.5
    max_interval: float = 60.0
    multiplier: float = 2.0
    jitter: float = 0.5
    _backoff: Backoff = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.max_attempts != FOREVER and self.max_attempts < 1:
            raise InvalidArgument("maxAttempts must be >= 1, or -1 for forever")
        for name in ("initial_interval", "max_interval", "jitter"):
            if getattr(self, name) < 0:
                raise InvalidArgument(f"retry {name} must not be negative")
        if self.multiplier < 1:
            raise InvalidArgument("retry multiplier must be >= 1")
        backoff = Backoff(self.initial_interval, self.max_interval, self.multiplier, self.jitter)
        object.__setattr__(self, "_backoff", backoff)

    def exhausted(self, attempt: int) -> bool:
        """True when the delivery numbered ``attempt`` was the last one allowed."""
        return self.max_attempts != FOREVER and attempt >= self.max_attempts

    def delay(self, attempt: int) -> float:
        """Seconds to wait before the delivery after the one numbered ``attempt``."""
        return self._backoff.delay(attempt)


@dataclass(frozen=True, slots=True)
class SubscriptionOptions:
    """How one group consumes one topic.

    ``concurrency`` bounds the handlers running at once, ``batch_size`` the messages fetched in
    one read; ``processing_timeout`` is the handler deadline.  The :attr:`lease` after which an
    unacknowledged delivery is given to another consumer outlives it: the deadline watchdog's
    granularity plus time to settle, so two consumers never run one message at once.
    ``dead_letter_topic`` defaults to ``<topic>.deadletter``.
    """

    group: str
    concurrency: int = 10
    batch_size: int = 100
    processing_timeout: float = 60.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    dead_letter_topic: str | None = None

    def __post_init__(self) -> None:
        validate_name(self.group, "group name")
        if self.concurrency < 1:
            raise InvalidArgument("concurrency must be >= 1")
        if self.batch_size < 1:
            raise InvalidArgument("batch size must be >= 1")
        if self.processing_timeout <= 0:
            raise InvalidArgument("processingTimeout must be positive")
        if self.dead_letter_topic is not None:
            validate_topic(self.dead_letter_topic)

    @property
    def watchdog_interval(self) -> float:
        """How often the handler deadlines are checked: a time-out fires at most this late."""
        return min(self.processing_timeout / 10, 1.0)

    @property
    def lease(self) -> float:
        """How long a backend holds a delivery for its consumer: the deadline, the watchdog's
        lateness and a margin to settle (half the deadline, at most a second)."""
        margin = min(self.processing_timeout / 2, 1.0)
        return self.processing_timeout + self.watchdog_interval + margin

    def dead_letter_for(self, topic: str) -> str:
        """The topic that receives this subscription's dead letters."""
        return self.dead_letter_topic or f"{topic}.deadletter"
