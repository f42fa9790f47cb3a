"""The sidecar's async invocation block: its result store, its caller side and its callee side.

Start-up (:func:`start_invocations`, once the system bus is connected): open the result store,
then record the replies arriving for this app (:class:`~invoke.async_client.AsyncClient`), so
submissions, ``GET`` and callbacks work even without an app port.  Once the app channel is up
(:meth:`Invocations.serve`): serve the app's async topic (:class:`~invoke.async_server.AsyncServer`)
and let callbacks reach the app.  Shutdown (:meth:`Invocations.close`, before the app channel
closes): stop serving, stop recording, close the store.

The result store: the state component named by ``--invocation-store NAME`` (its own connection,
keys as in :mod:`invoke.results`), else an embedded ``state.sqlite`` on
``$OMNIBUS_HOME/invocations.db`` that every sidecar on the machine shares.  Results are kept for
``--invocation-results-ttl`` (default ``24h``).

The retry policy and time-out of the app's async invocations come from the Resiliency policy of
``targets.apps.<this app id>`` in this (the callee's) sidecar's resources, since the callee's
sidecar runs the retries; else the bus's default retries (10 attempts) and a 60 s time-out.  At most
32 async invocations run in the app at once, or ``--app-max-concurrency`` if that is set.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response

from bus.broker import BaseBroker
from bus.errors import ConfigError
from components.resiliency import to_retry_policy
from components.specs import ResiliencySpec, Resources
from invoke.async_client import AsyncClient
from invoke.async_server import AsyncPolicy, AsyncServer
from invoke.call import Call
from invoke.results import ListingNotSupported, ResultConflict, Results, Stored
from runtime.api.app import SidecarState
from runtime.api.invocations import respond_async
from runtime.api.invoke import channel_caller
from runtime.channel import AppChannel
from runtime.config import SidecarConfig
from state import (
    Concurrency,
    DeleteRequest,
    ETagInvalid,
    ETagMismatch,
    Feature,
    SetRequest,
    StateStore,
    store_from_component,
)

EMBEDDED_STORE = "omnibus-invocations"


class StateResultStore:
    """:class:`invoke.results.ResultStore` over a state store (keys used as they are)."""

    def __init__(self, store: StateStore) -> None:
        self.store = store

    async def get(self, key: str) -> Stored | None:
        """The value and etag under ``key``."""
        item = await self.store.get(key)
        return None if item is None else Stored(item.value, item.etag or "")

    async def put(
        self, key: str, value: bytes, *, ttl: float, etag: str | None = None, create: bool = False
    ) -> None:
        """Save with a TTL; first-write (etag or absence checked) when asked."""
        checked = etag is not None or create
        request = SetRequest(
            key=key,
            value=value,
            etag=etag,
            concurrency=Concurrency.FIRST_WRITE if checked else Concurrency.LAST_WRITE,
            ttl=max(1, math.ceil(ttl)),
            content_type="application/json",
        )
        try:
            await self.store.set(request)
        except (ETagMismatch, ETagInvalid) as exc:
            raise ResultConflict(str(exc)) from exc

    async def delete(self, key: str) -> None:
        """Remove ``key``."""
        await self.store.delete(DeleteRequest(key=key))

    async def list(self, prefix: str) -> list[bytes]:
        """The values under ``prefix``, through the store's query API."""
        if Feature.QUERY_API not in self.store.features:
            raise ListingNotSupported(
                f"state store {self.store.name!r} cannot list invocations (it has no queries); "
                "GET /v1.0-alpha1/invocations/{id} works"
            )
        result = await self.store.query({}, prefix)
        return [item.value for item in result.results]


@dataclass
class Invocations:
    """The running async invocation block of one sidecar (``SidecarState.invocations``)."""

    client: AsyncClient
    store: StateStore
    broker: BaseBroker
    policy: AsyncPolicy
    namespace: str = ""  # the sidecar's own: its async topic is that of this namespace
    server: AsyncServer | None = None

    async def submit(self, call: Call, request: Request) -> Response:
        """Answer an invocation sent with ``Prefer: respond-async`` (202 + Location)."""
        return await respond_async(self.client, call)

    async def serve(self, channel: AppChannel) -> None:
        """Once the app channel is up: serve the app's async topic, allow callbacks."""
        caller = channel_caller(channel)
        self.client.app_caller = caller
        if self.server is None:
            results = self.client.results
            self.server = AsyncServer(
                self.broker,
                self.client.app_id,
                caller,
                results,
                self.policy,
                namespace=self.namespace,
            )
            await self.server.start()

    async def close(self) -> None:
        """Stop serving and recording (work in flight finishes within the drain bound)."""
        try:
            if self.server is not None:
                await self.server.stop()
            await self.client.stop()
        finally:
            await self.store.close()


def result_store(name: str | None, resources: Resources, home: Path) -> StateStore:
    """The (unconnected) store of invocation results; ConfigError for an unknown component."""
    if name is None:
        metadata = {"connectionString": str(home / "invocations.db")}
        return store_from_component(EMBEDDED_STORE, "state.sqlite", metadata, home=home)
    for spec in resources.components:
        if spec.kind == "state" and spec.name == name:
            return store_from_component(spec.name, spec.type, spec.metadata, home=home)
    known = ", ".join(s.name for s in resources.components if s.kind == "state") or "none"
    raise ConfigError(f"--invocation-store: no state component named {name!r} (loaded: {known})")


def async_policy(
    resiliencies: Sequence[ResiliencySpec], app_id: str, max_concurrency: int = -1
) -> AsyncPolicy:
    """The policy of ``app_id``'s async invocations (see the module docstring); a positive
    ``--app-max-concurrency`` also bounds the async invocations in the app at once."""
    policy = AsyncPolicy()
    retry = timeout = None
    for resiliency in resiliencies:
        target = resiliency.apps.get(app_id, {})
        if retry is None and "retry" in target:
            retry = to_retry_policy(resiliency.retries[target["retry"]])
        if timeout is None and "timeout" in target:
            timeout = resiliency.timeouts[target["timeout"]]
    return AsyncPolicy(
        retry=retry or policy.retry,
        timeout=timeout if timeout else policy.timeout,
        concurrency=max_concurrency if max_concurrency > 0 else policy.concurrency,
    )


async def start_invocations(
    broker: BaseBroker,
    config: SidecarConfig,
    resources: Resources,
    home: Path,
    *,
    namespace: str = "",
) -> Invocations:
    """Open the result store and start recording this app's results."""
    store = result_store(config.invocation_store, resources, home)
    await store.connect()
    try:
        results = Results(StateResultStore(store), config.invocation_results_ttl)
        client = AsyncClient(
            broker,
            config.app_id,
            results,
            has_app=config.app_port is not None,
            namespace=namespace,
        )
        await client.start()
    except BaseException:
        await store.close()
        raise
    policy = async_policy(resources.resiliencies, config.app_id, config.app_max_concurrency)
    return Invocations(
        client=client, store=store, broker=broker, policy=policy, namespace=namespace
    )


async def serve_async_invocations(state: SidecarState, channel: AppChannel) -> None:
    """Once the app channel is up: serve the app's async invocations (if the block runs)."""
    if state.invocations is not None:
        await state.invocations.serve(channel)


async def stop_async_invocations(state: SidecarState) -> None:
    """At shutdown, before the app channel closes."""
    invocations, state.invocations = state.invocations, None
    if invocations is not None:
        await invocations.close()
