"""Typed, frozen specs of Dapr resource files: what the rest of omnibus reads, never raw YAML.

``components/loader.py`` turns ``kind: Component``, ``kind: Subscription`` and ``kind: Resiliency``
documents into these; programmatic subscriptions (``GET /dapr/subscribe``) become the same
:class:`SubscriptionSpec`.  Secrets and ``{env:NAME}`` are already resolved in ``metadata``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from bus.errors import ConfigError
from bus.options import parse_bool

_EMPTY: Mapping[str, str] = MappingProxyType({})


class ComponentMetadata(Mapping[str, str]):
    """A component's metadata, read-only, whose names match in any case, as Dapr's metadata
    decoder matches them (``redishost`` finds ``redisHost``); it lists the names as written.
    Two names that differ only in case are a ConfigError: which one would count is unclear."""

    __slots__ = ("_items", "_folded")

    def __init__(self, items: Mapping[str, str]) -> None:
        self._items = dict(items)
        self._folded: dict[str, str] = {}
        for name in self._items:
            other = self._folded.setdefault(name.lower(), name)
            if other != name:
                raise ConfigError(
                    f"metadata names {other!r} and {name!r} differ only in case (names match "
                    "in any case, as in Dapr): keep one"
                )

    def __getitem__(self, name: str) -> str:
        return self._items[self._folded.get(name.lower(), name)]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:  # names only: values hold passwords and connection strings
        return f"ComponentMetadata(names={list(self._items)!r})"


SubscriptionType = Literal["DECLARATIVE", "PROGRAMMATIC"]


@dataclass(frozen=True, slots=True)
class ComponentSpec:
    """One ``kind: Component``: ``type`` like ``pubsub.redis``, metadata as strings."""

    name: str
    type: str
    version: str = "v1"
    metadata: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    scopes: tuple[str, ...] = ()
    source: str = ""  # the file it came from, for error messages

    def __post_init__(self) -> None:
        if not isinstance(self.metadata, ComponentMetadata):
            object.__setattr__(self, "metadata", ComponentMetadata(self.metadata))

    @property
    def kind(self) -> str:
        """The building block: ``pubsub`` or ``state``."""
        return self.type.split(".", 1)[0]

    def applies_to(self, app_id: str) -> bool:
        """True if the component is not scoped or scoped to ``app_id``."""
        return not self.scopes or app_id in self.scopes


@dataclass(frozen=True, slots=True)
class RouteRule:
    """A CEL expression over ``event`` and the app path it routes to."""

    match: str
    path: str


@dataclass(frozen=True, slots=True)
class Routes:
    """Rules tried in order, first match wins; ``default`` when none matches (or no rules)."""

    rules: tuple[RouteRule, ...] = ()
    default: str | None = None


@dataclass(frozen=True, slots=True)
class BulkSubscribe:
    """Dapr's ``bulkSubscribe`` block: deliver up to ``max_messages`` per POST."""

    enabled: bool = False
    max_messages: int = 100
    max_await_ms: int = 1000


@dataclass(frozen=True, slots=True)
class SubscriptionSpec:
    """One subscription, declarative (a file) or programmatic (``/dapr/subscribe``)."""

    pubsubname: str
    topic: str
    routes: Routes
    dead_letter_topic: str | None = None
    metadata: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    bulk: BulkSubscribe = field(default_factory=BulkSubscribe)
    scopes: tuple[str, ...] = ()
    type: SubscriptionType = "DECLARATIVE"
    name: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        if self.metadata.get("rawPayload", "").strip():  # a bad value fails at load, not delivery
            parse_bool(
                self.metadata["rawPayload"], what=f"{self.source or 'subscription'}: rawPayload"
            )

    def applies_to(self, app_id: str) -> bool:
        """True if the subscription is not scoped or scoped to ``app_id``."""
        return not self.scopes or app_id in self.scopes

    @property
    def raw_payload(self) -> bool:
        """True when the app wants the bytes as published, without a CloudEvent envelope."""
        raw = self.metadata.get("rawPayload", "")
        return bool(raw.strip()) and parse_bool(raw, what="rawPayload")


@dataclass(frozen=True, slots=True)
class RetrySpec:
    """A named retry policy of a Resiliency file (Dapr semantics: maxRetries -1 = forever)."""

    policy: Literal["constant", "exponential"] = "constant"
    duration: float = 5.0  # seconds: the constant interval, or the first exponential one
    max_interval: float = 60.0
    max_retries: int = -1
    # matching: the HTTP statuses / gRPC codes retried; None retries every failure of its kind
    http_status_codes: frozenset[int] | None = None
    grpc_status_codes: frozenset[int] | None = None


@dataclass(frozen=True, slots=True)
class CircuitBreakerSpec:
    """A named circuit breaker of a Resiliency file (Dapr's fields and defaults)."""

    max_requests: int = 1  # requests let through while half-open
    interval: float = 0.0  # seconds after which a closed breaker clears its counts; 0: never
    timeout: float = 60.0  # seconds an open breaker waits before going half-open
    trip: str = "consecutiveFailures > 5"  # CEL over the counts: true opens the breaker


@dataclass(frozen=True, slots=True)
class ResiliencySpec:
    """``kind: Resiliency``: named policies and the targets that use them (as policy names)."""

    name: str
    retries: Mapping[str, RetrySpec] = field(default_factory=lambda: MappingProxyType({}))
    timeouts: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    circuit_breakers: Mapping[str, CircuitBreakerSpec] = field(
        default_factory=lambda: MappingProxyType({})
    )
    # component name -> direction ("inbound" | "outbound") -> {"retry" | "timeout" | ...: name}
    components: Mapping[str, Mapping[str, Mapping[str, str]]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    # app id -> {"retry": name, "timeout": name}
    apps: Mapping[str, Mapping[str, str]] = field(default_factory=lambda: MappingProxyType({}))
    scopes: tuple[str, ...] = ()
    source: str = ""


@dataclass(frozen=True, slots=True)
class Resources:
    """Everything loaded from the resources paths, already filtered for one app id."""

    components: tuple[ComponentSpec, ...] = ()
    subscriptions: tuple[SubscriptionSpec, ...] = ()
    resiliencies: tuple[ResiliencySpec, ...] = ()
