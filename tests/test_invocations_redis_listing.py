"""Listing async invocations on a ``state.redis`` result store (``--invocation-store``).

The listing reads the caller's records through the store's query API, which state.redis offers
by scanning its keys; the sidecar's invocation block is started as the sidecar starts it, from a
``state.redis`` component named by ``--invocation-store``, on the session's private redis-server.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bus.memory import MemoryBroker
from components.specs import ComponentSpec, Resources
from invoke.results import RECORD_PREFIX
from runtime.api.app import SidecarState, build_app
from runtime.api.guard import ASGIApp
from runtime.async_invocations import Invocations, start_invocations
from runtime.config import SidecarConfig
from runtime.pubsub.components import PubSubs
from state.redis import RedisStore
from tests.backends.redis import RedisServer
from tests.runtime_asgi import Component, call

pytestmark = pytest.mark.redis

ASYNC = {"Prefer": "respond-async"}


@dataclass
class Sidecar:
    app: ASGIApp
    app_id: str
    invocations: Invocations

    async def submit(self, method: str) -> str:
        reply = await call(
            self.app, "POST", f"/v1.0/invoke/callee/method/{method}", body=b"{}", headers=ASYNC
        )
        assert reply.status == 202, reply.body
        iid: str = reply.json()["id"]
        return iid


async def _start(broker: MemoryBroker, server: RedisServer, home: Path, app_id: str) -> Sidecar:
    results = ComponentSpec("results", "state.redis", metadata={"redisHost": server.address})
    config = SidecarConfig(app_id=app_id, invocation_store="results", invocation_results_ttl=60)
    invocations = await start_invocations(broker, config, Resources(components=(results,)), home)
    pubsubs = PubSubs([Component("pubsub", broker)])
    await pubsubs.connect()
    state = SidecarState(app_id=app_id, pubsubs=pubsubs, api_ready=True, bus=broker)
    state.invocations = invocations
    return Sidecar(build_app(state), app_id, invocations)


@pytest.fixture
async def sidecars(
    redis_server: RedisServer, tmp_path: Path
) -> AsyncIterator[tuple[Sidecar, Sidecar]]:
    """Two callers' sidecars sharing one bus and one Redis result store."""
    broker = MemoryBroker()
    await broker.connect()
    unique = uuid.uuid4().hex[:8]
    made = [
        await _start(broker, redis_server, tmp_path, f"caller-{unique}"),
        await _start(broker, redis_server, tmp_path, f"other-{unique}"),
    ]
    try:
        yield made[0], made[1]
    finally:
        for sidecar in made:
            store = sidecar.invocations.store
            assert isinstance(store, RedisStore)
            match = (RECORD_PREFIX + sidecar.app_id + "||").replace("|", "\\|") + "*"
            keys = [k async for k in store.client.scan_iter(match=match)]
            if keys:
                await store.client.delete(*keys)
            await sidecar.invocations.close()
        await broker.close()


async def test_listing_on_a_redis_result_store_shows_this_apps_invocations(
    sidecars: tuple[Sidecar, Sidecar],
) -> None:
    # Given a caller on a state.redis result store with two invocations, one of them cancelled,
    # and another caller's invocation in the same store
    caller, other = sidecars
    assert isinstance(caller.invocations.store, RedisStore)
    first = await caller.submit("orders/new")
    second = await caller.submit("orders/old")
    cancelled = await call(caller.app, "DELETE", f"/v1.0-alpha1/invocations/{second}")
    assert cancelled.status == 200
    await other.submit("elsewhere")
    # When the caller lists its invocations
    listed = await call(caller.app, "GET", "/v1.0-alpha1/invocations")
    # Then both of its own are there, oldest first, and not the other caller's
    assert listed.status == 200, listed.body
    rows = listed.json()["invocations"]
    assert [(r["id"], r["status"]) for r in rows] == [(first, "pending"), (second, "cancelled")]
    assert rows[0]["callee"] == "callee" and rows[0]["method"] == "orders/new"
    # And the status filter works on the same listing
    pending = await call(caller.app, "GET", "/v1.0-alpha1/invocations?status=pending")
    assert [r["id"] for r in pending.json()["invocations"]] == [first]
