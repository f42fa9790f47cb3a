"""Which broker carries state and invocation: --bus, else `pubsub`, else the embedded SQLite bus."""

from __future__ import annotations

from pathlib import Path

import pytest

from bus.errors import ConfigError
from bus.memory import MemoryBroker
from bus.sqlite import SqliteBroker
from components.registry import PubSub, build_pubsub
from components.specs import ComponentSpec
from runtime.system_bus import EMBEDDED_NAME, choose_system_bus


def component(name: str, home: Path) -> PubSub:
    spec = ComponentSpec(name=name, type="pubsub.in-memory")
    return build_pubsub(spec, app_id="app", instance="app-1", home=home)


def choose(requested: str | None, names: list[str], home: Path):  # type: ignore[no-untyped-def]
    components = [component(name, home) for name in names]
    chosen = choose_system_bus(
        requested, components, app_id="app", instance="app-1", home=home, drain_timeout=1.0
    )
    return chosen, {c.name: c.broker for c in components}


def test_the_bus_flag_names_the_pubsub(tmp_path: Path) -> None:
    chosen, brokers = choose("orders", ["pubsub", "orders"], tmp_path)
    assert chosen.broker is brokers["orders"] and not chosen.owned


def test_the_pubsub_named_pubsub_is_the_default(tmp_path: Path) -> None:
    chosen, brokers = choose(None, ["events", "pubsub"], tmp_path)
    assert chosen.broker is brokers["pubsub"] and chosen.name == "pubsub" and not chosen.owned


def test_without_a_pubsub_named_pubsub_the_embedded_bus_is_used(tmp_path: Path) -> None:
    chosen, _ = choose(None, ["events"], tmp_path)
    assert isinstance(chosen.broker, SqliteBroker) and chosen.owned
    assert chosen.name == EMBEDDED_NAME
    assert not isinstance(chosen.broker, MemoryBroker)


async def test_the_embedded_bus_is_the_machine_s_shared_file(tmp_path: Path) -> None:
    chosen, _ = choose(None, [], tmp_path)
    async with chosen.broker:
        pass
    assert (tmp_path / "bus.db").is_file()  # every sidecar with this OMNIBUS_HOME shares it


def test_an_unknown_bus_stops_start_up_with_the_names_loaded(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--bus: no pubsub component named 'nope' \(loaded: a\)"):
        choose("nope", ["a"], tmp_path)
