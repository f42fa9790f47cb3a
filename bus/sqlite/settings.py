"""Settings of the embedded SQLite broker.

Built from component metadata by :mod:`components.pubsub_settings`; a value out of range raises
:class:`ConfigError` naming the metadata key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bus.errors import ConfigError


def default_path(home: Path | None = None) -> Path:
    """The default bus file: ``<home>/bus.db``, ``home`` defaulting to ``~/.omnibus``."""
    return (home if home is not None else Path.home() / ".omnibus") / "bus.db"


# Settings field -> the component metadata key that sets it.
_DURATIONS = {
    "redeliver_interval": "redeliverInterval",
    "min_poll_interval": "minPollInterval",
    "max_poll_interval": "maxPollInterval",
    "busy_timeout": "busyTimeout",
}


@dataclass(frozen=True, slots=True)
class SqliteSettings:
    """Where the bus file is and how the broker polls it.

    ``redeliver_interval`` bounds how long an idle consumer goes without re-checking its group.
    ``max_len`` (``maxLenApprox``, off by default) caps the messages kept per topic: beyond it
    the oldest are deleted even if a group has not acked them, as Redis' MAXLEN does.
    """

    path: Path
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
