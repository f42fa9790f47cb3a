"""The one place that turns a state component's Dapr metadata into a store and its settings."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from bus.errors import ConfigError
from state.memory import MemorySettings, MemoryStore
from state.store import StateStore

STORE_TYPES = ("state.in-memory", "state.sqlite", "state.redis", "state.postgresql")


def store_from_component(
    name: str, type: str, metadata: Mapping[str, str], *, home: Path
) -> StateStore:
    """A (not yet connected) store for a component of ``type`` with ``metadata``."""
    if type == "state.in-memory":
        return MemoryStore(name, MemorySettings())
    raise ConfigError(
        f"component {name!r}: state store type {type!r} is not supported "
        f"(expected one of {', '.join(STORE_TYPES)})"
    )
