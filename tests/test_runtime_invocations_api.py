"""The async invocation HTTP API through the sidecar's ASGI app: ``Prefer: respond-async``,
``/v1.0-alpha1/invocations``; MemoryBroker and the in-memory state store underneath."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import orjson
import pytest

from bus.envelope import Headers
from bus.memory import MemoryBroker
from bus.options import RetryPolicy
from invoke.async_client import AsyncClient
from invoke.async_server import AsyncPolicy, AsyncServer
from invoke.call import Call, Reply, async_topic
from invoke.results import Results
from runtime.api.app import SidecarState, build_app
from runtime.api.guard import ASGIApp
from runtime.async_invocations import Invocations, StateResultStore, async_policy
from runtime.pubsub.components import PubSubs
from state import Feature, MemoryStore
from tests.helpers import eventually
from tests.runtime_asgi import Component, call

QUICK = RetryPolicy(max_attempts=3, initial_interval=0.01, max_interval=0.02, jitter=0.0)
ASYNC = {"Prefer": "wait=5, Respond-Async"}


@dataclass
class App:
    """The callee app: answers with its script of statuses, the last one repeated."""

    statuses: list[int] = field(default_factory=lambda: [200])
    calls: list[Call] = field(default_factory=list)

    async def __call__(self, call: Call, timeout: float) -> Reply:
        self.calls.append(call)
        status = self.statuses[min(len(self.calls), len(self.statuses)) - 1]
        headers = Headers([("content-type", "application/json"), ("set-cookie", "a=1")])
        headers.add("set-cookie", "b=2")
        return Reply(status, headers, orjson.dumps({"n": len(self.calls)}))


@dataclass
class Sidecar:
    app: ASGIApp
    state: SidecarState
    broker: MemoryBroker
    results: Results
    servers: list[AsyncServer] = field(default_factory=list)

    async def serve(self, app: App) -> None:
        server = AsyncServer(self.broker, "callee", app, self.results, AsyncPolicy(retry=QUICK))
        await server.start()
        self.servers.append(server)

    async def submit(self, headers: dict[str, str] | None = None) -> str:
        reply = await call(
            self.app,
            "POST",
            "/v1.0/invoke/callee/method/orders/new?x=1",
            body=b'{"order": 1}',
            headers={**ASYNC, **(headers or {})},
        )
        assert reply.status == 202, reply.body
        iid: str = reply.json()["id"]
        return iid

    async def result(self, iid: str) -> tuple[int, dict[str, str], bytes]:
        async def done() -> bool:
            reply = await call(self.app, "GET", f"/v1.0-alpha1/invocations/{iid}")
            return reply.status != 202

        await eventually(done)
        reply = await call(self.app, "GET", f"/v1.0-alpha1/invocations/{iid}")
        return reply.status, dict(reply.headers), reply.body


@pytest.fixture
async def sidecar() -> AsyncIterator[Sidecar]:
    broker = MemoryBroker()
    await broker.connect()
    pubsubs = PubSubs([Component("pubsub", broker)])
    await pubsubs.connect()
    state = SidecarState(app_id="caller", pubsubs=pubsubs, api_ready=True, bus=broker)
    store = MemoryStore("results")
    results = Results(StateResultStore(store), ttl=60)
    client = AsyncClient(broker, "caller", results)
    await client.start()
    state.invocations = Invocations(client, store, broker, AsyncPolicy(retry=QUICK))
    made = Sidecar(build_app(state), state, broker, results)
    try:
        yield made
    finally:
        for server in made.servers:
            await server.stop()
        await client.stop()
        await pubsubs.close()
        await broker.close()


async def test_respond_async_answers_202_with_a_location(sidecar: Sidecar) -> None:
    reply = await call(
        sidecar.app,
        "POST",
        "/v1.0/invoke/callee/method/orders/new",
        body=b"{}",
        headers={"Prefer": "respond-async"},
    )
    assert reply.status == 202
    body = reply.json()
    assert body["status"] == "pending"
    assert reply.headers["location"] == f"/v1.0-alpha1/invocations/{body['id']}"
    assert reply.headers["preference-applied"] == "respond-async"
    assert reply.headers["dapr-invocation-id"] == body["id"]
    (held,) = await sidecar.broker.browse(async_topic("callee"))
    assert held.id == body["id"]


async def test_get_is_202_while_pending_then_the_recorded_response(sidecar: Sidecar) -> None:
    # Given a submission while the callee is down
    iid = await sidecar.submit()
    pending = await call(sidecar.app, "GET", f"/v1.0-alpha1/invocations/{iid}")
    assert pending.status == 202
    assert pending.json() == {"id": iid, "status": "pending", "attempts": 0}
    # When the callee comes up and fails twice with 503
    app = App([503, 503, 201])
    await sidecar.serve(app)
    # Then GET answers the third response verbatim
    status, headers, body = await sidecar.result(iid)
    assert status == 201
    assert orjson.loads(body) == {"n": 3}
    assert headers["content-type"] == "application/json"
    assert headers["dapr-invocation-status"] == "completed"
    # the app got the caller's request, without the headers meant for the sidecar
    call_ = app.calls[-1]
    assert (call_.method, call_.query, call_.body) == ("orders/new", "x=1", b'{"order": 1}')
    assert call_.headers.get("prefer") is None
    assert call_.headers.get("dapr-invocation-id") == iid
    assert call_.headers.get("dapr-invocation-attempt") == "3"
    assert call_.headers.get("dapr-caller-app-id") == "caller"


async def test_the_recorded_response_keeps_every_header_value(sidecar: Sidecar) -> None:
    await sidecar.serve(App())
    iid = await sidecar.submit()
    await sidecar.result(iid)
    scope_reply = await call(sidecar.app, "GET", f"/v1.0-alpha1/invocations/{iid}")
    assert scope_reply.status == 200
    record = await sidecar.results.get("caller", iid)
    assert record is not None and record.response is not None
    assert record.response.headers.get_all("set-cookie") == ["a=1", "b=2"]


async def test_failed_after_its_attempts(sidecar: Sidecar) -> None:
    await sidecar.serve(App([500]))
    iid = await sidecar.submit()
    status, headers, _ = await sidecar.result(iid)
    assert status == 500
    assert headers["dapr-invocation-status"] == "failed"
    dead = await sidecar.broker.browse(async_topic("callee") + ".deadletter")
    assert [m.id for m in dead] == [iid]


async def test_an_idempotency_key_gives_the_same_invocation(sidecar: Sidecar) -> None:
    first = await sidecar.submit({"Idempotency-Key": "k-1"})
    second = await sidecar.submit({"Idempotency-Key": "k-1"})
    third = await sidecar.submit({"Idempotency-Key": "k-2"})
    assert first == second != third
    assert len(await sidecar.broker.browse(async_topic("callee"))) == 2
    reused = await call(
        sidecar.app,
        "DELETE",
        "/v1.0/invoke/callee/method/other",
        headers={**ASYNC, "Idempotency-Key": "k-1"},
    )
    assert reused.status == 409
    assert reused.json()["errorCode"] == "ERR_IDEMPOTENCY_KEY_REUSED"


async def test_delete_cancels_a_pending_invocation(sidecar: Sidecar) -> None:
    iid = await sidecar.submit()
    cancelled = await call(sidecar.app, "DELETE", f"/v1.0-alpha1/invocations/{iid}")
    assert cancelled.status == 200
    assert cancelled.json()["status"] == "cancelled"
    app = App()
    await sidecar.serve(app)
    await eventually(lambda: _drained(sidecar.broker, async_topic("callee")))
    assert app.calls == []
    got = await call(sidecar.app, "GET", f"/v1.0-alpha1/invocations/{iid}")
    assert got.status == 200 and got.headers["dapr-invocation-status"] == "cancelled"


async def _drained(broker: MemoryBroker, topic: str) -> bool:
    return not await broker.browse(topic)


async def test_delete_of_a_finished_one_is_409_and_unknown_404(sidecar: Sidecar) -> None:
    await sidecar.serve(App())
    iid = await sidecar.submit()
    await sidecar.result(iid)
    finished = await call(sidecar.app, "DELETE", f"/v1.0-alpha1/invocations/{iid}")
    assert finished.status == 409
    assert finished.json()["errorCode"] == "ERR_INVOCATION_NOT_PENDING"
    for method in ("GET", "DELETE"):
        unknown = await call(sidecar.app, method, "/v1.0-alpha1/invocations/" + "0" * 32)
        assert unknown.status == 404
        assert unknown.json()["errorCode"] == "ERR_INVOCATION_NOT_FOUND"
    bad = await call(sidecar.app, "GET", "/v1.0-alpha1/invocations/a%20b")
    assert bad.status == 400


async def test_list_shows_this_apps_invocations(sidecar: Sidecar) -> None:
    first = await sidecar.submit()
    second = await sidecar.submit()
    await call(sidecar.app, "DELETE", f"/v1.0-alpha1/invocations/{second}")
    listed = await call(sidecar.app, "GET", "/v1.0-alpha1/invocations")
    assert listed.status == 200
    rows = listed.json()["invocations"]
    assert [(r["id"], r["status"]) for r in rows] == [(first, "pending"), (second, "cancelled")]
    assert rows[0]["callee"] == "callee" and rows[0]["method"] == "orders/new"
    pending = await call(sidecar.app, "GET", "/v1.0-alpha1/invocations?status=pending")
    assert [r["id"] for r in pending.json()["invocations"]] == [first]
    bad = await call(sidecar.app, "GET", "/v1.0-alpha1/invocations?status=nope")
    assert bad.status == 400


@pytest.mark.parametrize(
    "headers",
    [{"Idempotency-Key": "has space"}, {"dapr-callback": ""}, {"Idempotency-Key": "x" * 300}],
)
async def test_bad_sidecar_headers_are_400(sidecar: Sidecar, headers: dict[str, str]) -> None:
    reply = await call(
        sidecar.app, "POST", "/v1.0/invoke/callee/method/m", headers={**ASYNC, **headers}
    )
    assert reply.status == 400
    assert reply.json()["errorCode"] == "ERR_MALFORMED_REQUEST"


async def test_without_the_block_answers_an_error_body(sidecar: Sidecar) -> None:
    sidecar.state.invocations = None
    got = await call(sidecar.app, "GET", "/v1.0-alpha1/invocations/" + "0" * 32)
    assert got.status == 500
    assert got.json()["errorCode"] == "ERR_INVOCATIONS_UNAVAILABLE"


def test_the_policy_comes_from_the_apps_resiliency_target() -> None:
    from components.specs import ResiliencySpec, RetrySpec

    spec = ResiliencySpec(
        name="r",
        retries={"quick": RetrySpec(policy="constant", duration=0.2, max_retries=2)},
        timeouts={"short": 3.0},
        apps={"callee": {"retry": "quick", "timeout": "short"}},
    )
    policy = async_policy([spec], "callee")
    assert policy.retry.max_attempts == 3 and policy.timeout == 3.0
    assert async_policy([spec], "other") == AsyncPolicy()
    assert async_policy([], "other", max_concurrency=4).concurrency == 4


class NoQueryStore(MemoryStore):
    """A store without the query API (a third-party store could be one)."""

    features = frozenset({Feature.ETAG, Feature.TTL})


async def test_list_on_a_store_without_queries_is_501(sidecar: Sidecar) -> None:
    invocations = sidecar.state.invocations
    assert invocations is not None
    invocations.client.results = Results(StateResultStore(NoQueryStore("r")), ttl=60)
    iid = await sidecar.submit()
    listed = await call(sidecar.app, "GET", "/v1.0-alpha1/invocations")
    assert listed.status == 501
    assert listed.json()["errorCode"] == "ERR_NOT_SUPPORTED"
    got = await call(sidecar.app, "GET", f"/v1.0-alpha1/invocations/{iid}")
    assert got.status == 202
