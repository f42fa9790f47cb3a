"""The in-process backend for the conformance suite."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from bus.memory import MemoryBroker, MemoryHub
from tests.backends import BackendEnv


@pytest.fixture
def backend_memory() -> Iterator[BackendEnv]:
    hub = MemoryHub()

    def new_broker(**kwargs: Any) -> MemoryBroker:
        return MemoryBroker(hub, **kwargs)

    async def retained(topic: str) -> int:
        state = hub.topics.get(topic)
        return len(state.log) if state is not None else 0

    yield BackendEnv("memory", new_broker, durable=False, retained=retained)
