"""Settings of the embedded SQLite broker, read from Dapr-style component metadata.

Keys (durations as ``30s`` or bare milliseconds, as in Dapr): ``connectionString`` (the database
file; default ``<home>/bus.db``), ``processingTimeout``, ``redeliverInterval``,
``minPollInterval``, ``maxPollInterval``, ``busyTimeout``, ``maxLenApprox`` (a positive integer).
Keys of other layers (``consumerID``, ``concurrency``...) are left to them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bus.errors import ConfigError, InvalidArgument
from bus.options import parse_duration


def default_path(home: Path | None = None) -> Path:
    """The default bus file: ``<home>/bus.db``, ``home`` defaulting to ``~/.omnibus``."""
    return (home if home is not None else Path.home() / ".omnibus") / "bus.db"


# Settings field -> the component metadata key that sets it (a duration: "30s" or milliseconds).
_DURATIONS = {
    "processing_timeout": "processingTimeout",
    "redeliver_interval": "redeliverInterval",
    "min_poll_interval": "minPollInterval",
    "max_poll_interval": "maxPollInterval",
    "busy_timeout": "busyTimeout",
}


@dataclass(frozen=True, slots=True)
class SqliteSettings:
    """Where the bus file is and how the broker polls it.

    ``processing_timeout`` is the default lease of subscriptions built from this component;
    ``redeliver_interval`` bounds how long an idle consumer goes without re-checking its group.
    ``max_len`` (``maxLenApprox``, off by default) caps the messages kept per topic: beyond it
    the oldest are deleted even if a group has not acked them, as Redis' MAXLEN does.
    """

    path: Path
    processing_timeout: float = 60.0
    redeliver_interval: float = 15.0
    min_poll_interval: float = 0.001
    max_poll_interval: float = 0.05
    busy_timeout: float = 5.0
    trim_interval: float = 1.0
    max_len: int | None = None

    def __post_init__(self) -> None:
        for name, key in _DURATIONS.items():
            if name != "busy_timeout" and getattr(self, name) <= 0:
                raise ConfigError(f"sqlite pubsub {key} must be a positive duration")
        if self.busy_timeout < 0:
            raise ConfigError("sqlite pubsub busyTimeout must not be negative")
        if self.max_poll_interval < self.min_poll_interval:
            raise ConfigError("sqlite pubsub maxPollInterval must not be below minPollInterval")
        if self.trim_interval <= 0:
            raise ConfigError("sqlite trim interval must be positive")
        if self.max_len is not None and self.max_len < 1:
            raise ConfigError("sqlite pubsub maxLenApprox must be a positive integer")

    @classmethod
    def from_metadata(
        cls, metadata: Mapping[str, str], *, home: Path | None = None
    ) -> SqliteSettings:
        """Settings from Dapr-style component metadata; unknown keys are left to other layers."""
        path = _parse_path(metadata.get("connectionString"), home)
        values: dict[str, float] = {}
        for name, key in _DURATIONS.items():
            if key in metadata:
                try:
                    values[name] = parse_duration(metadata[key], what=key)
                except InvalidArgument as exc:
                    raise ConfigError(f"sqlite pubsub metadata {exc}") from None
        return cls(path=path, max_len=_parse_max_len(metadata.get("maxLenApprox")), **values)


def _parse_max_len(value: str | None) -> int | None:
    if value is None or not value.strip():
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(
            f"sqlite pubsub metadata maxLenApprox: expected a positive integer, got {value!r}"
        ) from None


def _parse_path(value: str | None, home: Path | None) -> Path:
    if value is None or not value.strip():
        return default_path(home)
    text = value.strip()
    if text.startswith("file:"):
        text = text[len("file:") :]
    if "?" in text or text == ":memory:" or not text:
        raise ConfigError(
            f"sqlite pubsub metadata connectionString: {value!r} is not a database file path "
            "(expected e.g. '~/.omnibus/bus.db'; URI parameters and ':memory:' are not supported)"
        )
    return Path(text).expanduser()
