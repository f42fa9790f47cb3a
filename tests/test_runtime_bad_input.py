"""Bad and unusual request bodies: Go's JSON field matching, deep nesting, never a 500."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest

from bus.memory import MemoryBroker, MemoryHub
from bus.message import Outcome
from runtime.api.app import SidecarState, build_app
from runtime.api.guard import ASGIApp
from runtime.pubsub.app_delivery import outcome_of
from runtime.pubsub.bulk_delivery import entry_outcomes
from runtime.pubsub.components import PubSubs
from tests.runtime_asgi import Component, call


@pytest.fixture
async def api() -> AsyncIterator[tuple[ASGIApp, MemoryBroker]]:
    broker = MemoryBroker(MemoryHub())
    pubsubs = PubSubs([Component("pubsub", broker)])
    await pubsubs.connect()
    state = SidecarState(app_id="checkout", pubsubs=pubsubs, api_ready=True)
    yield build_app(state, max_body_size=1024 * 1024), broker
    await pubsubs.close()


async def test_bulk_entries_match_fields_as_go_does(api: tuple[ASGIApp, MemoryBroker]) -> None:
    """The JS SDK (@dapr/dapr 3.x) sends ``entryID``; Dapr's struct field is ``entryId``."""
    app, broker = api
    entries = [
        {"entryID": "1", "event": {"n": 1}, "contentType": "application/json"},
        {"EntryId": "2", "EVENT": "two", "ContentType": "text/plain", "Metadata": {"k": "v"}},
    ]
    reply = await call(
        app, "POST", "/v1.0-alpha1/publish/bulk/pubsub/js", body=orjson.dumps(entries)
    )
    assert reply.status == 204, reply.body
    first, second = await broker.browse("js")
    assert orjson.loads(first.data)["data"] == {"n": 1}
    assert orjson.loads(second.data)["data"] == "two"
    assert second.metadata["k"] == "v"


DEEP = b"[" * 5000 + b"]" * 5000
DEEPISH = b'{"a":' * 300 + b"1" + b"}" * 300  # orjson reads it, but could not write it back


@pytest.mark.parametrize("body", [DEEP, DEEPISH], ids=["5000", "300"])
@pytest.mark.parametrize(
    ("url", "content_type"),
    [
        ("/v1.0/publish/pubsub/t", "application/json"),
        ("/v1.0/publish/pubsub/t", "application/cloudevents+json"),
        ("/v1.0-alpha1/publish/bulk/pubsub/t", "application/json"),
    ],
)
async def test_deeply_nested_json_is_a_400(
    api: tuple[ASGIApp, MemoryBroker], body: bytes, url: str, content_type: str
) -> None:
    app, broker = api
    reply = await call(app, "POST", url, body=body, headers={"content-type": content_type})
    assert reply.status == 400, reply.body
    assert reply.json()["errorCode"] == "ERR_MALFORMED_REQUEST"
    assert "nested deeper" in reply.json()["message"]
    assert await broker.browse("t") == []


async def test_a_deep_bulk_entry_event_is_a_400(api: tuple[ASGIApp, MemoryBroker]) -> None:
    app, _ = api
    event = b'{"a":' * 250 + b"1" + b"}" * 250
    body = b'[{"entryId": "1", "event": ' + event + b"}]"
    reply = await call(app, "POST", "/v1.0-alpha1/publish/bulk/pubsub/t", body=body)
    assert reply.status == 400, reply.body


async def test_deep_brackets_as_text_are_just_text(api: tuple[ASGIApp, MemoryBroker]) -> None:
    app, broker = api
    reply = await call(
        app, "POST", "/v1.0/publish/pubsub/t", body=DEEP, headers={"content-type": "text/plain"}
    )
    assert reply.status == 204
    (message,) = await broker.browse("t")
    assert orjson.loads(message.data)["data"] == DEEP.decode()


async def test_deep_invalid_json_falls_back_to_text_without_recursing(
    api: tuple[ASGIApp, MemoryBroker],
) -> None:
    """Invalid JSON is carried as text, as before; the stdlib retry must not recurse away."""
    app, broker = api
    body = b"[" * 900 + b"1,"
    reply = await call(
        app,
        "POST",
        "/v1.0/publish/pubsub/t",
        body=body,
        headers={"content-type": "application/json"},
    )
    assert reply.status == 204, reply.body
    (message,) = await broker.browse("t")
    assert orjson.loads(message.data)["data"] == body.decode()


def test_app_answers_match_fields_as_go_does() -> None:
    assert outcome_of(200, b'{"Status": "DROP"}') is Outcome.DROP
    assert outcome_of(200, b'{"STATUS": "RETRY"}') is Outcome.RETRY
    answer = (
        b'{"Statuses": [{"EntryID": "a", "Status": "SUCCESS"}, {"entryid": "b", "STATUS": "DROP"}]}'
    )
    assert entry_outcomes(200, answer, ["a", "b"]) == {"a": Outcome.SUCCESS, "b": Outcome.DROP}


@pytest.mark.parametrize("ttl", ["99999999999999999999", "3153600001", "-1", "soon"])
async def test_unusable_ttls_are_request_metadata_errors(
    api: tuple[ASGIApp, MemoryBroker], ttl: str
) -> None:
    app, _ = api
    reply = await call(
        app, "POST", f"/v1.0/publish/pubsub/t?metadata.ttlInSeconds={ttl}", body=b"x"
    )
    assert reply.status == 400, reply.body
    assert reply.json()["errorCode"] == "ERR_PUBSUB_REQUEST_METADATA"
