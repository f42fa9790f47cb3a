"""The sidecar's system bus: the broker that carries state and invocation requests.

Pub/sub components carry the app's topics; state and service invocation need one broker of their
own that every sidecar of the deployment shares.  Which one, in order:

1. the pubsub component named by ``--bus NAME``;
2. else the pubsub component named ``pubsub`` (Dapr's conventional name), if it is loaded;
3. else an embedded SQLite bus on ``$OMNIBUS_HOME/bus.db``, which every sidecar on the machine
   shares, so two sidecars reach each other with no pubsub component at all (a resources path
   that holds only a ``statestore.yaml``, as Dapr's hello-world has).

A pubsub component chosen as the system bus is connected and closed with the other components;
the embedded one is the sidecar's own (it connects it first and closes it last).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bus.broker import BaseBroker
from bus.errors import ConfigError
from components.registry import DEFAULT_PUBSUB_NAME, build_pubsub
from components.specs import ComponentSpec
from runtime.pubsub.components import PubSubComponent

EMBEDDED_NAME = "omnibus-system-bus"


@dataclass(frozen=True, slots=True)
class SystemBus:
    """The chosen broker, and whether the sidecar owns it (connects and closes it itself)."""

    broker: BaseBroker
    name: str
    owned: bool


def choose_system_bus(
    requested: str | None,
    components: Sequence[PubSubComponent],
    *,
    app_id: str,
    instance: str,
    home: Path,
    drain_timeout: float,
) -> SystemBus:
    """The system bus for these components (see the module docstring); ConfigError if bad."""
    by_name = {component.name: component for component in components}
    if requested:
        if requested not in by_name:
            known = ", ".join(sorted(by_name)) or "none"
            raise ConfigError(f"--bus: no pubsub component named {requested!r} (loaded: {known})")
        return SystemBus(by_name[requested].broker, requested, owned=False)
    if DEFAULT_PUBSUB_NAME in by_name:
        return SystemBus(by_name[DEFAULT_PUBSUB_NAME].broker, DEFAULT_PUBSUB_NAME, owned=False)
    spec = ComponentSpec(
        name=EMBEDDED_NAME,
        type="pubsub.sqlite",
        metadata={"connectionString": str(home / "bus.db")},
        source="the embedded system bus",
    )
    embedded = build_pubsub(
        spec, app_id=app_id, instance=instance, home=home, drain_timeout=drain_timeout
    )
    return SystemBus(embedded.broker, EMBEDDED_NAME, owned=True)
