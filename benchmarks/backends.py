"""Our brokers by backend name, built exactly as a sidecar builds them: through the registry.

A backend whose bus module is not installed raises :class:`~bus.errors.ConfigError` from the
registry; the runner records that as the reason the backend was skipped.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.services import Target
from bus.broker import BaseBroker
from bus.options import SubscriptionOptions
from components.registry import PubSub, build_pubsub
from components.specs import ComponentSpec

PUBSUB_NAME = "pubsub"


def component(target: Target) -> ComponentSpec:
    """The ``kind: Component`` a user would write for ``target``."""
    return ComponentSpec(
        name=PUBSUB_NAME,
        type=target.component_type,
        metadata=dict(target.metadata),
        source=f"benchmark {target.backend}",
    )


def build(target: Target, *, app_id: str, instance: str, home: Path) -> PubSub:
    """The pubsub component of ``target``: an unconnected broker and its defaults."""
    return build_pubsub(component(target), app_id=app_id, instance=instance, home=home)


def make_broker(target: Target, *, instance: str, home: Path) -> BaseBroker:
    """An unconnected broker of ``target``."""
    return build(target, app_id="bench", instance=instance, home=home).broker


def bench_options(group: str, concurrency: int = 100, batch_size: int = 100) -> SubscriptionOptions:
    """Options of the bus-only consumer: 100 handlers, fetches of 100 (as the raw baselines)."""
    return SubscriptionOptions(group=group, concurrency=concurrency, batch_size=batch_size)


def rabbit_names(topic: str, group: str) -> list[tuple[str, str]]:
    """The exchanges and queues our RabbitMQ broker declares for ``topic`` and ``group``."""
    return [
        ("queue", f"{group}-{topic}"),
        ("queue", f"{topic}@held"),
        ("exchange", f"{topic}@held"),
        ("exchange", topic),
    ]
