"""Fixtures shared by the whole suite: the backend matrix and broker factories."""

from __future__ import annotations

import importlib.util
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from bus.broker import BaseBroker
from tests.backends import BACKENDS, BackendEnv

# Each backend is a plugin module of its own; one that does not exist yet is simply not listed.
_PRESENT = [b for b in BACKENDS if importlib.util.find_spec(f"tests.backends.{b}") is not None]
pytest_plugins = [f"tests.backends.{b}" for b in _PRESENT]

_MARKS = {"redis": [pytest.mark.redis], "rabbitmq": [pytest.mark.rabbitmq]}


@pytest.fixture(params=[pytest.param(b, marks=_MARKS.get(b, []), id=b) for b in _PRESENT])
def env(request: pytest.FixtureRequest) -> BackendEnv:
    """The backend under test; every conformance test runs once per backend."""
    result: BackendEnv = request.getfixturevalue(f"backend_{request.param}")
    return result


MakeBroker = Callable[..., Awaitable[BaseBroker]]


@pytest.fixture
async def make_broker(env: BackendEnv) -> AsyncIterator[MakeBroker]:
    """Connected brokers of the backend under test, closed at the end of the test."""
    made: list[BaseBroker] = []

    async def make(**kwargs: Any) -> BaseBroker:
        broker = env.new_broker(**kwargs)
        await broker.connect()
        made.append(broker)
        return broker

    yield make
    for broker in reversed(made):
        await broker.close()


@pytest.fixture
def topic() -> str:
    """A topic name no other test (or test run) uses."""
    return f"t.{uuid.uuid4().hex[:12]}"
