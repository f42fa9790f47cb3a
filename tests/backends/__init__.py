"""One pytest plugin per bus backend.

Each module defines a fixture ``backend_<name>`` yielding a :class:`BackendEnv`: what the
conformance suite needs to create brokers of that backend, already wired to a private or
uniquely-named server, and cleaned up afterwards.  ``tests/conftest.py`` parametrizes the fixture
``env`` over every backend listed in :data:`BACKENDS`.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest

from bus.broker import BaseBroker

BACKENDS = ("memory", "sqlite", "redis", "rabbitmq")


@dataclass(frozen=True)
class BackendEnv:
    """How the conformance suite makes brokers of one backend.

    ``new_broker(instance=None)`` returns an unconnected broker; every broker made from one env
    shares the same server (hub, database file, Redis, vhost), like processes on one machine.
    ``durable`` is False for the in-process backend, whose data dies with the process.
    ``retained(topic)``, where a backend can tell, counts the messages its storage still holds for
    the topic (to check that trimming happens).
    """

    name: str
    new_broker: Callable[..., BaseBroker]
    durable: bool = True
    retained: Callable[[str], Awaitable[int]] | None = None


def missing_service(reason: str) -> None:
    """Skip with a visible reason locally; under CI=true a missing broker is a failure."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)
