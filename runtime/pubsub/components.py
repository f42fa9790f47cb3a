"""The pub/sub components of one sidecar, as the HTTP API and the subscriptions see them.

:class:`PubSubComponent` is the shape of ``components.registry.PubSub`` (name, type, an
unconnected broker, defaults, capabilities); the runtime depends on that shape only, so tests can
hand it components built from in-memory brokers.  :class:`PubSubs` owns the connected brokers
and one coalescing :class:`~runtime.pubsub.publisher.Publisher` per component.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol

from bus.broker import BaseBroker
from bus.options import RetryPolicy
from runtime.api.dapr_errors import (
    ERR_PUBSUB_EMPTY,
    ERR_PUBSUB_FORBIDDEN,
    ERR_PUBSUB_NOT_FOUND,
    ApiError,
)
from runtime.pubsub.publisher import Publisher
from runtime.pubsub.scopes import OPEN, TopicScopes

log = logging.getLogger("omnibus.runtime")


class PubSubDefaults(Protocol):
    """Per-component subscription defaults (Dapr's names: consumerID, concurrency, queueDepth)."""

    @property
    def group(self) -> str | None: ...

    @property
    def concurrency(self) -> int: ...

    @property
    def batch_size(self) -> int: ...

    @property
    def processing_timeout(self) -> float: ...

    @property
    def retry(self) -> RetryPolicy: ...


class PubSubComponent(Protocol):
    """One ``kind: Component`` of type ``pubsub.*``, built but not connected."""

    @property
    def name(self) -> str: ...

    @property
    def type(self) -> str: ...

    @property
    def broker(self) -> BaseBroker: ...

    @property
    def defaults(self) -> PubSubDefaults: ...

    @property
    def capabilities(self) -> tuple[str, ...]: ...


class PubSubs:
    """The sidecar's pub/sub components by name, with a publisher each."""

    def __init__(
        self,
        components: Sequence[PubSubComponent],
        scopes: Mapping[str, TopicScopes] | None = None,
    ) -> None:
        self._components = {c.name: c for c in components}
        self._scopes = dict(scopes or {})
        self._publishers = {c.name: Publisher(c.broker) for c in components}
        self.connected = False

    def __iter__(self) -> Iterator[PubSubComponent]:
        return iter(self._components.values())

    def __len__(self) -> int:
        return len(self._components)

    def get(self, name: str) -> PubSubComponent:
        """The component called ``name``, or Dapr's 404 ERR_PUBSUB_NOT_FOUND."""
        if not name:
            raise ApiError(404, ERR_PUBSUB_EMPTY, "pubsub name is empty")
        component = self._components.get(name)
        if component is None:
            raise ApiError(404, ERR_PUBSUB_NOT_FOUND, f"pubsub {name!r} is not found")
        return component

    def scopes(self, name: str) -> TopicScopes:
        """The topic scoping of component ``name`` for this app (open when none is set)."""
        return self._scopes.get(name, OPEN)

    def check_publish(self, name: str, topic: str) -> None:
        """Dapr's 403 ERR_PUBSUB_FORBIDDEN when the scopes do not let this app publish."""
        if not self.scopes(name).can_publish(topic):
            raise ApiError(
                403, ERR_PUBSUB_FORBIDDEN, f"topic {topic} is not allowed for this app on {name}"
            )

    def publisher(self, name: str) -> Publisher:
        """The coalescing publisher of component ``name`` (which must exist)."""
        return self._publishers[self.get(name).name]

    async def connect(self) -> None:
        """Connect every broker; on a failure, close those already connected and re-raise."""
        done: list[BaseBroker] = []
        try:
            for component in self:
                await component.broker.connect()
                done.append(component.broker)
        except BaseException:
            for broker in done:
                await _close_quietly(broker)
            raise
        self.connected = True

    async def drain_publishes(self) -> None:
        """Wait until publishes already accepted have reached their brokers."""
        for publisher in self._publishers.values():
            await publisher.drain()

    async def close(self) -> None:
        """Close every broker: each stops its subscriptions in order, then disconnects."""
        self.connected = False
        for component in self:
            await _close_quietly(component.broker)


async def _close_quietly(broker: BaseBroker) -> None:
    try:
        await broker.close()
    except Exception:
        log.exception("closing broker %s failed", type(broker).__name__)
