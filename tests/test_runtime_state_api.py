"""Dapr's state HTTP API through the sidecar's ASGI app: every status and error code.

Stores are in-memory; ``statestore`` is served by this sidecar, ``remote`` by another sidecar on
the same (in-memory) bus, so both the in-process and the bus path answer through HTTP.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from bus.errors import ConfigError
from bus.memory import MemoryBroker, MemoryHub
from components.specs import ComponentSpec, Resources
from runtime.api.app import SidecarState, build_app
from runtime.api.guard import ASGIApp
from runtime.pubsub.components import PubSubs
from runtime.states import build_states
from state.errors import StoreUnavailable
from state.keys import KeyStrategy
from state.memory import MemoryStore
from state.service import StateClient, StateService, StoreConfig
from state.store import BulkItem, Feature, Item, QueryResult, SetRequest
from tests.runtime_asgi import Component, Reply, call

APP_ID = "checkout"


class _Broken(MemoryStore):
    """A store whose backend is down."""

    async def get(self, key: str) -> Item | None:
        raise StoreUnavailable("backend down")

    async def set(self, request: SetRequest) -> str:
        raise StoreUnavailable("backend down")

    async def delete(self, request: object) -> None:
        raise StoreUnavailable("backend down")

    async def bulk_get(self, keys: object) -> list[BulkItem]:
        raise StoreUnavailable("backend down")

    async def query(self, query: object, key_prefix: str) -> QueryResult:
        raise StoreUnavailable("backend down")


class _Plain(MemoryStore):
    """A store without transactions or queries (the service refuses both for it)."""

    features = frozenset({Feature.ETAG})


def _service(store: MemoryStore, keys: str | None = None, scopes: Sequence[str] = ()) -> Any:
    metadata = {} if keys is None else {"keyPrefix": keys}
    strategy = KeyStrategy.from_metadata(store.name, metadata)
    return StateService(store, StoreConfig("state.in-memory", tuple(scopes), strategy))


@dataclass
class Sidecar:
    app: ASGIApp
    state: SidecarState

    async def post(self, path: str, body: Any, **kwargs: Any) -> Reply:
        raw = body if isinstance(body, bytes) else orjson.dumps(body)
        return await call(self.app, "POST", path, body=raw, **kwargs)

    async def get(self, path: str, **kwargs: Any) -> Reply:
        return await call(self.app, "GET", path, **kwargs)

    async def delete(self, path: str, **kwargs: Any) -> Reply:
        return await call(self.app, "DELETE", path, **kwargs)


@pytest.fixture
async def sidecar() -> AsyncIterator[Sidecar]:
    hub = MemoryHub()
    async with MemoryBroker(hub) as bus, MemoryBroker(hub) as other_bus:
        other = StateClient("other-app", other_bus, [_service(MemoryStore("remote"))])
        await other.start()
        services = [
            _service(MemoryStore("statestore")),
            _service(_Plain("plain")),
            _service(_Broken("broken")),
            _service(MemoryStore("shared"), keys="none"),
            _service(MemoryStore("scoped"), scopes=["someone-else"]),
        ]
        pubsubs = PubSubs([Component("pubsub", bus)])
        await pubsubs.connect()
        state = SidecarState(app_id=APP_ID, pubsubs=pubsubs, api_ready=True, bus=bus)
        state.states = StateClient(APP_ID, bus, services)
        await state.states.start()
        try:
            yield Sidecar(build_app(state, max_body_size=64 * 1024), state)
        finally:
            await state.states.close()
            await other.close()
            await pubsubs.close()


def error(reply: Reply, status: int, code: str) -> None:
    assert reply.status == status, reply.body
    assert reply.json()["errorCode"] == code, reply.body
    assert reply.json()["message"]


@pytest.mark.parametrize("store", ["statestore", "remote"])
async def test_save_then_get_returns_the_json_text_with_an_etag(
    sidecar: Sidecar, store: str
) -> None:
    items = [{"key": "order", "value": {"id": 7, "items": ["a"]}}, {"key": "s", "value": "abc"}]
    reply = await sidecar.post(f"/v1.0/state/{store}", items)
    assert reply.status == 204, reply.body
    got = await sidecar.get(f"/v1.0/state/{store}/order")
    assert got.status == 200
    assert got.json() == {"id": 7, "items": ["a"]}
    assert got.headers["content-type"] == "application/json"
    assert got.headers["etag"]
    assert "metadata.ttlexpiretime" not in got.headers
    # a JSON string is stored as its JSON text and read back with its quotes, as Dapr
    assert (await sidecar.get(f"/v1.0/state/{store}/s")).body == b'"abc"'


async def test_get_of_an_absent_key_is_204(sidecar: Sidecar) -> None:
    reply = await sidecar.get("/v1.0/state/statestore/nothing")
    assert reply.status == 204 and reply.body == b""


async def test_an_empty_array_is_a_valid_save(sidecar: Sidecar) -> None:
    assert (await sidecar.post("/v1.0/state/statestore", b"[]")).status == 204


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{}",
        b"foobar",
        b"[{}]",
        b"[1]",
        b'[{"key": "a||b", "value": 1}]',
        b'[{"key": "a", "value": 1},]',
        b'[{"key": "a", "value": 1, "etag": 5}]',
        b'[{"key": "", "value": 1}]',
        b'[{"key": "a", "value": 1, "metadata": {"ttlInSeconds": 5}}]',
        b'[{"key": "a", "value": 1, "metadata": {"ttlInSeconds": "foo"}}]',
        b'[{"key": "a", "value": 1, "metadata": {"ttlInSeconds": "-2"}}]',
        b'[{"key": "a", "value": 1, "options": {"concurrency": "first-wins"}}]',
        b'[{"key": "a", "value": 1, "options": {"consistency": "total"}}]',
        b'[{"key": "a", "value": 1, "options": "strong"}]',
        b'[{"key": "a\xff", "value": 1}]',
        b'[{"key": "a", "value": ' + b"[" * 300 + b"]" * 300 + b"}]",
    ],
)
async def test_malformed_saves_are_400(sidecar: Sidecar, body: bytes) -> None:
    error(await sidecar.post("/v1.0/state/statestore", body), 400, "ERR_MALFORMED_REQUEST")


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1.0/state/nope", b"[]"),
        ("GET", "/v1.0/state/nope/k", b""),
        ("DELETE", "/v1.0/state/nope/k", b""),
        ("POST", "/v1.0/state/nope/bulk", b'{"keys": ["k"]}'),
        ("POST", "/v1.0/state/nope/transaction", b'{"operations": []}'),
        ("POST", "/v1.0-alpha1/state/nope/query", b"{}"),
        ("GET", "/v1.0/state/scoped/k", b""),  # scoped to another app: not found, as Dapr
        ("GET", "/v1.0/state/bad%20name/k", b""),
    ],
)
async def test_unknown_stores_are_400_store_not_found(
    sidecar: Sidecar, method: str, path: str, body: bytes
) -> None:
    reply = await call(sidecar.app, method, path, body=body)
    error(reply, 400, "ERR_STATE_STORE_NOT_FOUND")


async def test_etag_mismatch_is_409_on_save_and_delete(sidecar: Sidecar) -> None:
    await sidecar.post("/v1.0/state/statestore", [{"key": "k", "value": 1}])
    etag = (await sidecar.get("/v1.0/state/statestore/k")).headers["etag"]
    stale = [{"key": "k", "value": 2, "etag": str(int(etag) + 100)}]
    error(await sidecar.post("/v1.0/state/statestore", stale), 409, "ERR_STATE_SAVE")
    bad = [{"key": "k", "value": 2, "etag": "not-a-number"}]
    error(await sidecar.post("/v1.0/state/statestore", bad), 400, "ERR_STATE_SAVE")
    wrong = {"if-match": str(int(etag) + 100)}
    reply = await sidecar.delete("/v1.0/state/statestore/k", headers=wrong)
    error(reply, 409, "ERR_STATE_DELETE")
    reply = await sidecar.delete("/v1.0/state/statestore/k", headers={"if-match": "x"})
    error(reply, 400, "ERR_STATE_DELETE")
    # the right etag works; then the key is gone
    good = [{"key": "k", "value": 3, "etag": etag}]
    assert (await sidecar.post("/v1.0/state/statestore", good)).status == 204
    etag = (await sidecar.get("/v1.0/state/statestore/k")).headers["etag"]
    reply = await sidecar.delete("/v1.0/state/statestore/k", headers={"if-match": etag})
    assert reply.status == 204
    assert (await sidecar.get("/v1.0/state/statestore/k")).status == 204


async def test_first_write_without_etag_refuses_an_existing_key(sidecar: Sidecar) -> None:
    item = {"key": "k", "value": 1, "options": {"concurrency": "first-write"}}
    assert (await sidecar.post("/v1.0/state/statestore", [item])).status == 204
    error(await sidecar.post("/v1.0/state/statestore", [item]), 409, "ERR_STATE_SAVE")


async def test_delete_takes_concurrency_and_consistency_from_the_query(sidecar: Sidecar) -> None:
    path = "/v1.0/state/statestore/k?concurrency=first-write&consistency=strong"
    assert (await sidecar.delete(path)).status == 204
    bad = await sidecar.delete("/v1.0/state/statestore/k?concurrency=sometimes")
    error(bad, 400, "ERR_MALFORMED_REQUEST")


async def test_ttl_sets_the_expire_time_header_and_minus_one_clears_it(sidecar: Sidecar) -> None:
    item = {"key": "k", "value": 1, "metadata": {"ttlInSeconds": "100"}}
    assert (await sidecar.post("/v1.0/state/statestore", [item])).status == 204
    got = await sidecar.get("/v1.0/state/statestore/k")
    assert got.headers["metadata.ttlexpiretime"].endswith("Z")
    forever = {"key": "k", "value": 1, "metadata": {"ttlInSeconds": "-1"}}
    assert (await sidecar.post("/v1.0/state/statestore", [forever])).status == 204
    assert "metadata.ttlexpiretime" not in (await sidecar.get("/v1.0/state/statestore/k")).headers
    # query metadata applies to every item (and wins over the item's, as Dapr)
    path = "/v1.0/state/statestore?metadata.ttlInSeconds=50"
    assert (await sidecar.post(path, [forever])).status == 204
    assert "metadata.ttlexpiretime" in (await sidecar.get("/v1.0/state/statestore/k")).headers


async def test_bulk_get_answers_every_key_in_order(sidecar: Sidecar) -> None:
    await sidecar.post("/v1.0/state/statestore", [{"key": "a", "value": {"n": 1}}])
    reply = await sidecar.post(
        "/v1.0/state/statestore/bulk", {"keys": ["a", "missing"], "parallelism": 10}
    )
    assert reply.status == 200
    first, missing = reply.json()
    assert first["key"] == "a" and first["data"] == {"n": 1} and first["etag"]
    assert missing == {"key": "missing"}


@pytest.mark.parametrize(
    "body",
    [b"[]", b'{"keys": "a"}', b'{"keys": [1]}', b'{"keys": ["a"], "parallelism": "x"}', b"{"],
)
async def test_malformed_bulk_gets_are_400(sidecar: Sidecar, body: bytes) -> None:
    reply = await sidecar.post("/v1.0/state/statestore/bulk", body)
    error(reply, 400, "ERR_MALFORMED_REQUEST")


async def test_a_transaction_applies_in_order(sidecar: Sidecar) -> None:
    ops = [
        {"operation": "upsert", "request": {"key": "k1", "value": 1}},
        {"operation": "delete", "request": {"key": "k1"}},
        {"operation": "upsert", "request": {"key": "k2", "value": 2}},
        {"operation": "delete", "request": {"key": "k2"}},
        {"operation": "upsert", "request": {"key": "k3", "value": 3}},
    ]
    reply = await sidecar.post("/v1.0/state/statestore/transaction", {"operations": ops})
    assert reply.status == 204, reply.body
    assert (await sidecar.get("/v1.0/state/statestore/k1")).status == 204
    assert (await sidecar.get("/v1.0/state/statestore/k2")).status == 204
    assert (await sidecar.get("/v1.0/state/statestore/k3")).json() == 3
    put = await call(
        sidecar.app,
        "PUT",
        "/v1.0/state/statestore/transaction",
        body=b'{"operations": [], "metadata": null}',
    )
    assert put.status == 204


async def test_transaction_errors(sidecar: Sidecar) -> None:
    path = "/v1.0/state/statestore/transaction"
    unknown = {"operations": [{"operation": "merge", "request": {"key": "k"}}]}
    error(await sidecar.post(path, unknown), 400, "ERR_NOT_SUPPORTED_STATE_OPERATION")
    no_key = {"operations": [{"operation": "upsert", "request": {"value": 1}}]}
    error(await sidecar.post(path, no_key), 400, "ERR_MALFORMED_REQUEST")
    error(await sidecar.post(path, {"operations": {}}), 400, "ERR_MALFORMED_REQUEST")
    stale = {"operations": [{"operation": "delete", "request": {"key": "k", "etag": "77"}}]}
    error(await sidecar.post(path, stale), 500, "ERR_STATE_TRANSACTION")
    plain = {"operations": [{"operation": "delete", "request": {"key": "k"}}]}
    reply = await sidecar.post("/v1.0/state/plain/transaction", plain)
    error(reply, 500, "ERR_STATE_STORE_NOT_SUPPORTED")
    # as Dapr, the store's support is checked before the body is read
    reply = await sidecar.post("/v1.0/state/plain/transaction", b"not json")
    error(reply, 500, "ERR_STATE_STORE_NOT_SUPPORTED")


async def test_query_on_a_store_without_the_query_api_is_not_supported(sidecar: Sidecar) -> None:
    reply = await sidecar.post("/v1.0-alpha1/state/plain/query", {"filter": {}})
    error(reply, 500, "ERR_STATE_STORE_NOT_SUPPORTED")


async def test_go_cased_field_names_are_accepted(sidecar: Sidecar) -> None:
    item = {"KEY": "k", "Value": {"a": 1}, "Options": {"Concurrency": "first-write"}}
    assert (await sidecar.post("/v1.0/state/statestore", [item])).status == 204
    etag = (await sidecar.get("/v1.0/state/statestore/k")).headers["etag"]
    taken = {"key": "k", "value": 3, "options": {"CONCURRENCY": "first-write"}}
    assert (await sidecar.post("/v1.0/state/statestore", [taken])).status == 409
    again = [{"Key": "k", "VALUE": 2, "ETag": etag, "MetaData": {"ttlInSeconds": "100"}}]
    assert (await sidecar.post("/v1.0/state/statestore", again)).status == 204
    assert "metadata.ttlexpiretime" in (await sidecar.get("/v1.0/state/statestore/k")).headers
    reply = await sidecar.post("/v1.0/state/statestore/bulk", {"Keys": ["k"], "Parallelism": 1})
    assert reply.json()[0]["data"] == 2
    ops = {"Operations": [{"Operation": "delete", "Request": {"Key": "k"}}], "Metadata": {}}
    assert (await sidecar.post("/v1.0/state/statestore/transaction", ops)).status == 204
    assert (await sidecar.get("/v1.0/state/statestore/k")).status == 204


async def test_query_returns_the_callers_matching_keys(sidecar: Sidecar) -> None:
    items = [{"key": f"p{i}", "value": {"city": "Oslo" if i % 2 else "Rome"}} for i in range(4)]
    await sidecar.post("/v1.0/state/statestore", items)
    query = {"filter": {"EQ": {"city": "Oslo"}}, "sort": [{"key": "city"}]}
    reply = await sidecar.post("/v1.0-alpha1/state/statestore/query", query)
    assert reply.status == 200, reply.body
    results = reply.json()["results"]
    assert sorted(r["key"] for r in results) == ["p1", "p3"]
    assert all(r["data"] == {"city": "Oslo"} and r["etag"] for r in results)
    nothing = {"filter": {"EQ": {"city": "Paris"}}}
    assert (await sidecar.post("/v1.0-alpha1/state/statestore/query", nothing)).status == 204
    bad = await sidecar.post("/v1.0-alpha1/state/statestore/query", {"filter": {"LIKE": 1}})
    error(bad, 400, "ERR_MALFORMED_REQUEST")
    error(
        await sidecar.post("/v1.0-alpha1/state/statestore/query", []), 400, "ERR_MALFORMED_REQUEST"
    )


async def test_store_failures_are_500_with_the_operations_code(sidecar: Sidecar) -> None:
    error(
        await sidecar.post("/v1.0/state/broken", [{"key": "k", "value": 1}]), 500, "ERR_STATE_SAVE"
    )
    error(await sidecar.get("/v1.0/state/broken/k"), 500, "ERR_STATE_GET")
    error(await sidecar.delete("/v1.0/state/broken/k"), 500, "ERR_STATE_DELETE")
    bulk = await sidecar.post("/v1.0/state/broken/bulk", {"keys": ["k"]})
    error(bulk, 500, "ERR_STATE_BULK_GET")
    query = await sidecar.post("/v1.0-alpha1/state/broken/query", {})
    error(query, 500, "ERR_STATE_QUERY")


async def test_keys_in_paths_are_percent_decoded_and_must_be_utf8(sidecar: Sidecar) -> None:
    await sidecar.post("/v1.0/state/statestore", [{"key": "a/b é", "value": 1}])
    assert (await sidecar.get("/v1.0/state/statestore/a%2Fb%20%C3%A9")).json() == 1
    assert (await sidecar.get("/v1.0/state/statestore/a/b%20%C3%A9")).json() == 1
    error(await sidecar.get("/v1.0/state/statestore/%FF"), 400, "ERR_MALFORMED_REQUEST")
    error(await sidecar.delete("/v1.0/state/statestore/%C3"), 400, "ERR_MALFORMED_REQUEST")
    error(await sidecar.get("/v1.0/state/statestore/a%7C%7Cb"), 400, "ERR_MALFORMED_REQUEST")


async def test_prefix_none_shares_raw_keys(sidecar: Sidecar) -> None:
    item = [{"key": "other-app||k", "value": 1}]
    assert (await sidecar.post("/v1.0/state/shared", item)).status == 204
    assert (await sidecar.get("/v1.0/state/shared/other-app%7C%7Ck")).json() == 1


async def test_an_oversized_value_is_413_and_the_sidecar_keeps_serving(sidecar: Sidecar) -> None:
    big = [{"key": "k", "value": "x" * 100_000}]
    reply = await sidecar.post("/v1.0/state/statestore", big)
    assert reply.status == 413
    assert (await sidecar.post("/v1.0/state/statestore", [{"key": "k", "value": 1}])).status == 204


async def test_metadata_lists_the_state_stores_with_their_features(sidecar: Sidecar) -> None:
    components = (await sidecar.get("/v1.0/metadata")).json()["components"]
    stores = {c["name"]: c for c in components if c["type"].startswith("state.")}
    assert stores["statestore"]["capabilities"] == ["ETAG", "QUERY_API", "TRANSACTIONAL", "TTL"]
    assert stores["plain"]["capabilities"] == ["ETAG"]
    assert "remote" not in stores  # served by another sidecar


def _resources(*components: ComponentSpec) -> Resources:
    return Resources(components=components, subscriptions=(), resiliencies=())


def test_build_states_reads_scopes_prefixes_and_the_feed(tmp_path: Path) -> None:
    spec = ComponentSpec(
        name="orders-store",
        type="state.in-memory",
        metadata={"keyPrefix": "name", "changeFeedPubsub": "pubsub", "changeFeedTopic": "t"},
        scopes=("checkout",),
        source="orders.yaml",
    )
    pubsub = Component("pubsub", MemoryBroker(MemoryHub()))
    client = build_states(
        _resources(spec), app_id=APP_ID, bus=None, pubsubs=[pubsub], home=tmp_path
    )
    service = client.local("orders-store")
    assert service is not None
    assert service.config.scopes == ("checkout",)
    assert service.config.keys.for_app(APP_ID).storage_key("k") == "orders-store||k"
    assert service.feed is not None and service.feed.settings.topic == "t"


@pytest.mark.parametrize(
    ("metadata", "problem"),
    [
        ({"changeFeedPubsub": "missing", "changeFeedTopic": "t"}, "not loaded"),
        ({"outboxPublishPubsub": "pubsub"}, "outboxPublishTopic"),
        ({"keyPrefix": "a||b"}, "keyPrefix"),
    ],
)
def test_build_states_names_the_file_of_a_bad_component(
    tmp_path: Path, metadata: dict[str, str], problem: str
) -> None:
    spec = ComponentSpec("s", "state.in-memory", metadata=metadata, source="bad.yaml")
    pubsub = Component("pubsub", MemoryBroker(MemoryHub()))
    with pytest.raises(ConfigError, match=problem) as caught:
        build_states(_resources(spec), app_id=APP_ID, bus=None, pubsubs=[pubsub], home=tmp_path)
    assert str(caught.value).startswith("bad.yaml: ")


# The single-key calls are served in front of Starlette's router (StateEndpoint); every request
# must get the answer the router would have given it.
_ROUTED_ALIKE = [
    ("POST", "/v1.0/state/statestore", b'[{"key": "a", "value": 1}]'),
    ("PUT", "/v1.0/state/statestore", b'[{"key": "b", "value": "x"}]'),
    ("GET", "/v1.0/state/statestore/a", b""),
    ("GET", "/v1.0/state/statestore/a%2Fb", b""),
    ("GET", "/v1.0/state/statestore%2Fa/b", b""),
    ("GET", "/v1.0/state/statestore%2Fa", b""),
    ("DELETE", "/v1.0/state/statestore%2Fa", b""),
    ("GET", "/v1.0/state/statestore/", b""),
    ("GET", "/v1.0/state/statestore/bulk", b""),
    ("GET", "/v1.0/state/nope/a", b""),
    ("GET", "/v1.0/state//a", b""),
    ("GET", "/v1.0/state/statestore/a||b", b""),
    ("DELETE", "/v1.0/state/statestore/b", b""),
    ("DELETE", "/v1.0/state/statestore/a?concurrency=sometimes", b""),
    ("POST", "/v1.0/state/statestore", b"{not json"),
    ("POST", "/v1.0/state/statestore/bulk", b'{"keys": ["a"]}'),
    ("PUT", "/v1.0/state/statestore/a", b""),
    ("PATCH", "/v1.0/state/statestore", b"[]"),
    ("HEAD", "/v1.0/state/statestore/a", b""),
    ("POST", "/v1.0/state/broken", b'[{"key": "a", "value": 1}]'),
]


async def test_the_fast_path_answers_as_the_router(sidecar: Sidecar) -> None:
    from starlette.applications import Starlette

    from runtime.api import invoke as invoke_api
    from runtime.api import state as state_api

    routes = [*state_api.routes(sidecar.state), invoke_api.InvokeRoute(sidecar.state)]
    router = Starlette(routes=routes)
    fast = state_api.StateEndpoint(router, sidecar.state)
    seed = b'[{"key": "a", "value": {"seeded": true}}]'

    async def answer(app: ASGIApp, method: str, url: str, body: bytes) -> Reply:
        await call(router, "DELETE", "/v1.0/state/statestore/b")
        assert (await call(router, "POST", "/v1.0/state/statestore", body=seed)).status == 204
        return await call(app, method, url, body=body)

    for method, url, body in _ROUTED_ALIKE:
        by_router = await answer(router, method, url, body)
        through_fast = await answer(fast, method, url, body)
        assert through_fast.status == by_router.status, (method, url, through_fast.body)
        etagless = [re.sub(rb'"etag":"[^"]*"', b"", r.body) for r in (through_fast, by_router)]
        assert etagless[0] == etagless[1], (method, url)
    assert (await call(fast, "GET", "/v1.0/state/statestore/a")).json() == {"seeded": True}
