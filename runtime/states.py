"""The sidecar's state stores: built from the ``state.*`` components, served on the system bus.

Every ``state.*`` component that applies to this app becomes a store
(:func:`state.settings.store_from_component`) wrapped in a :class:`~state.service.StateService`
with the component's scopes, ``keyPrefix`` and change feed; the sidecar serves each on its system
bus (topic ``omnibus.state.<name>``) so sidecars without the component reach it, and calls its
own stores in-process.  A change feed's pubsub must be a component of this sidecar; the feed's
relay (:class:`state.feed.ChangeRelay`) starts with its store and publishes once the sidecar has
connected its pubsubs, which it does after its stores.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from bus.broker import BaseBroker
from bus.errors import ConfigError
from components.specs import ComponentSpec, Resources
from runtime.pubsub.components import PubSubComponent, PubSubs
from state.feed import ChangeFeed, FeedSettings
from state.keys import KeyStrategy
from state.service import StateClient, StateService, StoreConfig
from state.settings import store_from_component


def build_states(
    resources: Resources,
    *,
    app_id: str,
    bus: BaseBroker | None,
    pubsubs: Iterable[PubSubComponent],
    home: Path,
    namespace: str = "",
) -> StateClient:
    """The state client of a sidecar (stores built, not connected); ConfigError if a file is bad."""
    brokers = {component.name: component.broker for component in pubsubs}
    ready = _connected(pubsubs)
    services = [
        _service(spec, app_id=app_id, brokers=brokers, ready=ready, home=home, namespace=namespace)
        for spec in resources.components
        if spec.kind == "state"
    ]
    return StateClient(app_id, bus, services)


def _connected(pubsubs: Iterable[PubSubComponent]) -> Callable[[], bool]:
    """Whether the sidecar's pubsubs are connected: a relay publishes only then, so it never
    connects a broker while the sidecar does.  Components handed in otherwise (tests) connect
    on first use."""
    if isinstance(pubsubs, PubSubs):
        return lambda: pubsubs.connected
    return lambda: True


def _service(
    spec: ComponentSpec,
    *,
    app_id: str,
    brokers: dict[str, BaseBroker],
    ready: Callable[[], bool],
    home: Path,
    namespace: str,
) -> StateService:
    try:
        store = store_from_component(spec.name, spec.type, spec.metadata, home=home)
        keys = KeyStrategy.from_metadata(spec.name, spec.metadata, namespace=namespace)
        settings = FeedSettings.from_metadata(spec.name, spec.metadata)
        feed = None
        if settings is not None:
            if settings.pubsub not in brokers:
                known = ", ".join(sorted(brokers)) or "none"
                raise ConfigError(
                    f"component {spec.name!r}: the change feed names pubsub "
                    f"{settings.pubsub!r}, which is not loaded (loaded: {known})"
                )
            publisher = brokers[settings.pubsub]
            feed = ChangeFeed(spec.name, settings, publisher, source=app_id, ready=ready)
    except ConfigError as exc:
        raise ConfigError(f"{spec.source}: {exc}") from exc
    return StateService(store, StoreConfig(spec.type, spec.scopes, keys), feed)


async def start_states(
    resources: Resources,
    *,
    app_id: str,
    bus: BaseBroker | None,
    pubsubs: Iterable[PubSubComponent],
    home: Path,
    namespace: str = "",
) -> StateClient:
    """Build, connect and serve this sidecar's stores; the client the state API uses."""
    client = build_states(
        resources, app_id=app_id, bus=bus, pubsubs=pubsubs, home=home, namespace=namespace
    )
    await client.start()
    return client


async def stop_states(client: StateClient | None) -> None:
    """Stop serving and close the stores (nothing if they never started)."""
    if client is not None:
        await client.close()
