"""Namespaced app ids (Dapr's ``app.namespace``): how a target is split, which topic a sidecar
of a namespace serves, and which sidecar a call reaches, over one in-memory bus.

Sidecars of app ``orders`` run in the default namespace and in ``prod``; each one's app is an
in-memory :class:`AppCaller` that records its calls and names its namespace in the reply.
"""

from __future__ import annotations

import argparse
import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import orjson
import pytest

from bus.envelope import Headers
from bus.errors import ConfigError, InvalidName
from bus.memory import MemoryBroker, MemoryHub
from components.specs import Resources
from invoke import Call, Reply, async_topic, call_topic, validate_own_app_id
from invoke.async_client import AsyncClient, Submission, results_topic
from invoke.async_server import AsyncPolicy, AsyncServer
from invoke.results import Results
from invoke.server import InvocationServer
from runtime.api.app import SidecarState, build_app
from runtime.api.dapr_errors import ApiError
from runtime.api.guard import ASGIApp
from runtime.api.invoke import ERR_DIRECT_INVOKE, build_invoker, split_target
from runtime.async_invocations import Invocations, StateResultStore
from runtime.cli import build_parser
from runtime.config import parse_args
from runtime.pubsub.components import PubSubs
from state import MemoryStore
from tests.helpers import eventually
from tests.runtime_asgi import call

APP = "orders"


# --- splitting a target -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "own", "expected"),
    [
        ("orders", "", ("orders", "")),
        ("orders", "prod", ("orders", "prod")),
        ("orders.prod", "", ("orders", "prod")),
        ("orders.prod", "staging", ("orders", "prod")),
        ("orders.default", "prod", ("orders", "default")),
        ("my-app_1.ns-2", "", ("my-app_1", "ns-2")),
    ],
)
def test_a_target_is_app_id_and_namespace(target: str, own: str, expected: tuple[str, str]) -> None:
    assert split_target(target, own) == expected


@pytest.mark.parametrize("target", ["a.b.c", "orders.prod.x", "orders.", ".prod", "."])
def test_more_dots_or_an_empty_part_is_dapr_s_invalid_app_id(target: str) -> None:
    with pytest.raises(ApiError) as raised:
        split_target(target, "prod")
    assert (raised.value.status, raised.value.code) == (500, ERR_DIRECT_INVOKE)
    assert raised.value.message == f"failed to invoke, id: {target}, err: invalid app id {target}"


def test_a_url_is_not_split_and_is_no_app_id() -> None:
    with pytest.raises(InvalidName):
        split_target("https://example.com", "")


# --- topics ---------------------------------------------------------------------------------


async def _noop(call: Call, timeout: float) -> Reply:
    return Reply(200)


def test_a_sidecar_serves_the_topics_of_its_own_namespace() -> None:
    broker = MemoryBroker(MemoryHub())
    results = Results(StateResultStore(MemoryStore("r")), ttl=60)
    assert InvocationServer(broker, APP, _noop, namespace="prod").topic == call_topic(APP, "prod")
    assert call_topic(APP, "prod") == "omnibus.invoke.prod/orders"
    assert AsyncServer(broker, APP, _noop, results, namespace="prod").topic == async_topic(
        APP, "prod"
    )
    assert async_topic(APP, "prod") == "omnibus.invoke-async.prod/orders"
    # the default namespace keeps the topics of a sidecar without NAMESPACE
    for default in ("", "default"):
        assert InvocationServer(broker, APP, _noop, namespace=default).topic == call_topic(APP)
        server = AsyncServer(broker, APP, _noop, results, namespace=default)
        assert server.topic == "omnibus.invoke-async.orders"


# --- own app ids ----------------------------------------------------------------------------


def test_a_sidecar_refuses_a_dotted_app_id() -> None:
    assert validate_own_app_id("orders") == "orders"
    with pytest.raises(InvalidName, match="cannot contain dots"):
        validate_own_app_id("orders.prod")
    with pytest.raises(ConfigError, match="--app-id: .*cannot contain dots"):
        parse_args(["--app-id", "orders.prod"])


def test_omnibus_run_refuses_a_dotted_app_id(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        build_parser().parse_args(["run", "--app-id", "orders.prod"])
    assert raised.value.code == 2
    assert "an app id cannot contain dots" in capsys.readouterr().err
    parsed: argparse.Namespace = build_parser().parse_args(["run", "--app-id", "orders"])
    assert parsed.app_id == "orders"


# --- which sidecar a call reaches -----------------------------------------------------------


@dataclass
class NamedApp:
    """An app that records its calls and answers with the name of its namespace."""

    name: str
    calls: list[Call] = field(default_factory=list)

    async def __call__(self, call: Call, timeout: float) -> Reply:
        self.calls.append(call)
        return Reply(200, Headers([("x-namespace", self.name)]), self.name.encode())


@dataclass
class World:
    hub: MemoryHub = field(default_factory=MemoryHub)
    brokers: list[MemoryBroker] = field(default_factory=list)
    servers: list[InvocationServer | AsyncServer] = field(default_factory=list)
    clients: list[AsyncClient] = field(default_factory=list)

    async def broker(self) -> MemoryBroker:
        broker = MemoryBroker(self.hub)
        await broker.connect()
        self.brokers.append(broker)
        return broker

    async def sidecar(
        self, app_id: str, namespace: str, app: NamedApp | None = None
    ) -> tuple[ASGIApp, SidecarState]:
        """A sidecar's API; with ``app``, serving that app's calls in ``namespace``."""
        broker = await self.broker()
        state = SidecarState(
            app_id=app_id, pubsubs=PubSubs([]), api_ready=True, bus=broker, namespace=namespace
        )
        state.invoker = build_invoker(state, Resources())
        if app is not None:
            state.invoker.local = app
            server = InvocationServer(broker, app_id, app, namespace=namespace)
            await server.start()
            self.servers.append(server)
        return build_app(state), state

    async def close(self) -> None:
        for server in self.servers:
            await server.stop()
        for client in self.clients:
            await client.stop()
        for broker in self.brokers:
            await broker.close()


@pytest.fixture
async def world() -> AsyncIterator[World]:
    made = World()
    try:
        yield made
    finally:
        await made.close()


@pytest.fixture
async def apps(world: World) -> tuple[NamedApp, NamedApp]:
    """``orders`` in the default namespace and in ``prod``."""
    default, prod = NamedApp("default"), NamedApp("prod")
    await world.sidecar(APP, "", default)
    await world.sidecar(APP, "prod", prod)
    return default, prod


@pytest.mark.parametrize(
    ("caller_namespace", "target", "reached"),
    [
        ("", "orders.prod", "prod"),
        ("", "orders", "default"),
        ("", "orders.default", "default"),
        ("prod", "orders", "prod"),
        ("prod", "orders.default", "default"),
        ("default", "orders", "default"),
    ],
)
async def test_the_path_form_reaches_the_namespace_named(
    world: World,
    apps: tuple[NamedApp, NamedApp],
    caller_namespace: str,
    target: str,
    reached: str,
) -> None:
    caller, _ = await world.sidecar("checkout", caller_namespace)
    answer = await call(caller, "GET", f"/v1.0/invoke/{target}/method/who")
    assert (answer.status, answer.body) == (200, reached.encode())
    (got,) = {"default": apps[0], "prod": apps[1]}[reached].calls
    assert got.headers.get("dapr-callee-app-id") == APP
    assert got.headers.get("dapr-caller-app-id") == "checkout"
    assert got.headers.get("dapr-caller-namespace") == (caller_namespace or "default")


async def test_the_header_forms_reach_the_namespace_named(
    world: World, apps: tuple[NamedApp, NamedApp]
) -> None:
    caller, _ = await world.sidecar("checkout", "")
    by_header = await call(caller, "POST", "/anything", headers={"dapr-app-id": "orders.prod"})
    assert by_header.body == b"prod"
    token = base64.b64encode(b"dapr-app-id:orders.prod").decode()
    by_basic = await call(caller, "POST", "/anything", headers={"Authorization": f"Basic {token}"})
    assert by_basic.body == b"prod"
    assert [c.method for c in apps[1].calls] == ["anything", "anything"]
    assert apps[0].calls == []


async def test_a_spoofed_caller_namespace_is_overwritten(
    world: World, apps: tuple[NamedApp, NamedApp]
) -> None:
    caller, _ = await world.sidecar("checkout", "staging")
    spoof = {"dapr-caller-namespace": "prod"}
    await call(caller, "GET", "/v1.0/invoke/orders.prod/method/x", headers=spoof)
    (got,) = apps[1].calls
    assert got.headers.get_all("dapr-caller-namespace") == ["staging"]


async def test_a_malformed_target_answers_dapr_s_error(
    world: World, apps: tuple[NamedApp, NamedApp]
) -> None:
    caller, _ = await world.sidecar("checkout", "")
    answer = await call(caller, "GET", "/v1.0/invoke/orders.prod.eu/method/x")
    assert answer.status == 500
    assert orjson.loads(answer.body) == {
        "errorCode": "ERR_DIRECT_INVOKE",
        "message": "failed to invoke, id: orders.prod.eu, err: invalid app id orders.prod.eu",
    }
    assert apps[0].calls == [] and apps[1].calls == []


async def test_the_same_app_id_in_another_namespace_is_not_called_locally(
    world: World, apps: tuple[NamedApp, NamedApp]
) -> None:
    # Given the sidecar of orders in the default namespace, whose own app answers locally
    default_app, prod_app = apps
    local = NamedApp("local")
    api, _ = await world.sidecar(APP, "", local)
    # When it calls orders.prod, then orders
    prod = await call(api, "GET", "/v1.0/invoke/orders.prod/method/x")
    own = await call(api, "GET", "/v1.0/invoke/orders/method/x")
    # Then the first crossed the bus to the prod sidecar, the second stayed local
    assert (prod.body, own.body) == (b"prod", b"local")
    assert len(prod_app.calls) == 1 and len(local.calls) == 1 and default_app.calls == []


async def test_the_prod_sidecar_calls_its_own_app_locally_and_default_over_the_bus(
    world: World, apps: tuple[NamedApp, NamedApp]
) -> None:
    default_app, _ = apps
    api, _ = await world.sidecar(APP, "prod", NamedApp("local-prod"))
    assert (await call(api, "GET", "/v1.0/invoke/orders/method/x")).body == b"local-prod"
    assert (await call(api, "GET", "/v1.0/invoke/orders.prod/method/x")).body == b"local-prod"
    assert (await call(api, "GET", "/v1.0/invoke/orders.default/method/x")).body == b"default"
    assert len(default_app.calls) == 1


async def test_an_async_invocation_reaches_the_namespace_named(world: World) -> None:
    # Given async servers of orders in the default namespace and in prod on one result store
    broker = await world.broker()
    results = Results(StateResultStore(MemoryStore("results")), ttl=60)
    default_app, prod_app = NamedApp("default"), NamedApp("prod")
    policy = AsyncPolicy(timeout=2.0)
    for app, namespace in ((default_app, ""), (prod_app, "prod")):
        server = AsyncServer(broker, APP, app, results, policy, namespace=namespace)
        await server.start()
        world.servers.append(server)
    client = AsyncClient(broker, "checkout", results)
    await client.start()
    world.clients.append(client)
    state = SidecarState(app_id="checkout", pubsubs=PubSubs([]), api_ready=True, bus=broker)
    state.invocations = Invocations(client, MemoryStore("unused"), broker, policy)
    api = build_app(state)
    # When the caller submits to orders.prod with Prefer: respond-async
    submitted = await call(
        api, "POST", "/v1.0/invoke/orders.prod/method/x", headers={"Prefer": "respond-async"}
    )
    assert submitted.status == 202, submitted.body
    iid = submitted.json()["id"]

    # Then the prod app runs it, and its result is recorded for the caller
    async def done() -> bool:
        record = await client.get(iid)
        return record is not None and record.final

    await eventually(done)
    record = await client.get(iid)
    assert record is not None and record.response is not None
    assert record.response.body == b"prod"
    assert len(prod_app.calls) == 1 and default_app.calls == []
    assert prod_app.calls[0].headers.get("dapr-caller-namespace") == "default"


async def test_results_reach_the_caller_in_its_own_namespace(world: World) -> None:
    # Given callers of one app id in the default namespace and in prod, each with its own
    # result store (as on two machines), and a callee
    broker = await world.broker()
    app = NamedApp("callee")
    callee = AsyncServer(
        broker, "callee", app, Results(StateResultStore(MemoryStore("c")), 60), AsyncPolicy()
    )
    await callee.start()
    world.servers.append(callee)
    clients: dict[str, AsyncClient] = {}
    for namespace in ("", "prod"):
        results = Results(StateResultStore(MemoryStore(f"results-{namespace}")), ttl=60)
        client = AsyncClient(broker, "checkout", results, namespace=namespace)
        await client.start()
        world.clients.append(client)
        clients[namespace] = client
    assert results_topic("checkout", "prod") == "omnibus.invocations.prod/checkout"
    assert results_topic("checkout", "default") == results_topic("checkout")
    # When the prod caller submits invocations
    submitted = []
    for i in range(6):
        call_ = Call("callee", f"x/{i}", "POST", "", Headers(), b"", "checkout")
        record, _ = await clients["prod"].submit(Submission(call_))
        submitted.append(record.id)

    # Then every result is recorded by the prod caller, none lost to the default one
    async def all_done() -> bool:
        records = [await clients["prod"].get(iid) for iid in submitted]
        return all(r is not None and r.final for r in records)

    await eventually(all_done)
    assert len(app.calls) == 6


async def test_one_app_id_in_two_namespaces_keeps_its_own_records_on_a_shared_store(
    world: World,
) -> None:
    # Given callers "checkout" in the default namespace and in prod on ONE result store (the
    # machine's default), and callee "callee" in both namespaces on that store too
    broker = await world.broker()
    results = Results(StateResultStore(MemoryStore("shared")), ttl=60)
    apps = {namespace: NamedApp(namespace or "default") for namespace in ("", "prod")}
    clients: dict[str, AsyncClient] = {}
    for namespace, app in apps.items():
        server = AsyncServer(broker, "callee", app, results, AsyncPolicy(), namespace=namespace)
        await server.start()
        world.servers.append(server)
        client = AsyncClient(broker, "checkout", results, namespace=namespace)
        await client.start()
        world.clients.append(client)
        clients[namespace] = client
    # When each submits to the callee of its own namespace with the same idempotency key
    records = {}
    for namespace, client in clients.items():
        call_ = Call("callee", "x", "POST", "", Headers(), b"", "checkout", namespace=namespace)
        records[namespace], created = await client.submit(Submission(call_, "order-1"))
        assert created

    # Then they are two invocations, each run by its own namespace's app and listed by its caller
    assert records[""].id != records["prod"].id
    assert (records[""].callee, records["prod"].callee) == ("callee", "callee.prod")

    async def both_done() -> bool:
        found = [await c.get(records[n].id) for n, c in clients.items()]
        return all(r is not None and r.final for r in found)

    await eventually(both_done)
    for namespace, client in clients.items():
        record = await client.get(records[namespace].id)
        assert record is not None and record.response is not None
        assert record.response.body == apps[namespace].name.encode()
        assert [r.id for r in await client.list()] == [records[namespace].id]
        assert len(apps[namespace].calls) == 1
