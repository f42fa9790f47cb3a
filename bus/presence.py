"""Presence: which instances of which apps and services are alive right now.

Each process announces entries ``(name, instance, address, started, metadata)`` and refreshes them
with a heartbeat; an entry whose last beat is older than its TTL counts as gone.  A requester asks
before sending whether anybody serves a topic, so it fails at once instead of after a time-out;
``omnibus list`` shows the sidecars that are up.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from bus.message import validate_name, validate_topic

_EMPTY: Mapping[str, str] = MappingProxyType({})

HEARTBEAT_INTERVAL = 2.0
HEARTBEAT_TTL = 6.0

# Apps and served topics live in separate namespaces: the kind travels in the entry's metadata,
# which every backend stores, so an app and a service of one name never answer for each other.
KIND_KEY = "omnibus-kind"
APP = "app"
SERVICE = "service"


@dataclass(frozen=True, slots=True)
class Presence:
    """One live instance of an app (``name`` = app id) or of a served topic."""

    name: str
    instance: str
    address: str = ""
    started: float = field(default_factory=time.time)
    last_beat: float = field(default_factory=time.time)
    metadata: Mapping[str, str] = field(default_factory=lambda: _EMPTY)

    def __post_init__(self) -> None:
        validate_topic(self.name)  # app ids and topics: topics are the wider alphabet
        validate_name(self.instance, "instance name")
        if not isinstance(self.metadata, MappingProxyType):
            object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))

    @property
    def kind(self) -> str:
        """``app`` (a running sidecar or app) or ``service`` (a topic served over request/reply)."""
        return self.metadata.get(KIND_KEY, APP)

    def alive(self, now: float, ttl: float = HEARTBEAT_TTL) -> bool:
        """True if the last heartbeat is recent enough."""
        return now - self.last_beat <= ttl


def is_service(entry: Presence) -> bool:
    """True if ``entry`` announces a served topic."""
    return entry.kind == SERVICE
