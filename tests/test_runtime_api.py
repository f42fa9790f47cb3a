"""The sidecar's HTTP API in-process: publish, bulk publish, errors, token, body limit, health."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import orjson
import pytest

from bus.memory import MemoryBroker, MemoryHub
from bus.message import Message
from components.specs import RouteRule, Routes, SubscriptionSpec
from runtime.api.app import SidecarState, build_app
from runtime.api.guard import ASGIApp
from runtime.pubsub.components import PubSubs
from tests.runtime_asgi import Component, call

APP_ID = "checkout"
TRACEPARENT = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"


@dataclass
class Sidecar:
    app: ASGIApp
    state: SidecarState
    broker: MemoryBroker

    async def held(self, topic: str) -> list[Message]:
        return await self.broker.browse(topic)

    async def envelope(self, topic: str) -> dict[str, object]:
        (message,) = await self.held(topic)
        event: dict[str, object] = orjson.loads(message.data)
        assert event["id"] == message.id
        return event


async def _sidecar(token: str | None = None, max_body_size: int = 1024) -> Sidecar:
    broker = MemoryBroker(MemoryHub())
    pubsubs = PubSubs([Component("pubsub", broker)])
    await pubsubs.connect()
    state = SidecarState(app_id=APP_ID, pubsubs=pubsubs, api_ready=True)
    app = build_app(state, api_token=token, max_body_size=max_body_size)
    return Sidecar(app, state, broker)


@pytest.fixture
async def sidecar() -> AsyncIterator[Sidecar]:
    made = await _sidecar()
    yield made
    await made.state.pubsubs.close()


async def test_publish_json_embeds_the_payload_in_a_dapr_envelope(sidecar: Sidecar) -> None:
    reply = await call(
        sidecar.app,
        "POST",
        "/v1.0/publish/pubsub/orders",
        body=b'{"orderId": 7, "big": 123456789012345678901234567890}',
        headers={"content-type": "application/json", "traceparent": TRACEPARENT},
    )
    assert reply.status == 204, reply.body
    event = await sidecar.envelope("orders")
    # the payload's bytes are spliced into the envelope, so integers beyond 64 bits survive
    (message,) = await sidecar.held("orders")
    assert json.loads(message.data)["data"] == {"orderId": 7, "big": 123456789012345678901234567890}
    assert event["datacontenttype"] == "application/json"
    assert event["type"] == "com.dapr.event.sent"
    assert event["specversion"] == "1.0"
    assert event["source"] == APP_ID
    assert event["topic"] == "orders"
    assert event["pubsubname"] == "pubsub"
    assert event["traceparent"] == TRACEPARENT
    assert "expiration" not in event


@pytest.mark.parametrize(
    ("content_type", "body", "field", "value"),
    [
        (None, b"hello", "data", "hello"),
        ("text/plain", b"hello", "data", "hello"),
        ("application/octet-stream", b"\x00\xff", "data_base64", "AP8="),
        ("application/json", b"not json", "data", "not json"),
    ],
)
async def test_publish_other_content_types(
    sidecar: Sidecar, content_type: str | None, body: bytes, field: str, value: str
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    reply = await call(sidecar.app, "PUT", "/v1.0/publish/pubsub/t1", body=body, headers=headers)
    assert reply.status == 204
    event = await sidecar.envelope("t1")
    assert event[field] == value
    assert event["datacontenttype"] == (content_type or "text/plain")


async def test_publish_caller_cloudevent_is_kept_and_completed(sidecar: Sidecar) -> None:
    event = {"id": "my-id", "type": "widget", "source": "shop", "specversion": "1.0", "data": 1}
    event["topic"] = "elsewhere"
    reply = await call(
        sidecar.app,
        "POST",
        "/v1.0/publish/pubsub/widgets",
        body=orjson.dumps(event),
        headers={"content-type": "application/cloudevents+json"},
    )
    assert reply.status == 204
    stored = await sidecar.envelope("widgets")
    assert (stored["id"], stored["type"], stored["source"], stored["data"]) == (
        "my-id",
        "widget",
        "shop",
        1,
    )
    assert stored["topic"] == "widgets"
    assert stored["pubsubname"] == "pubsub"
    assert stored["time"] and stored["traceparent"]


async def test_publish_metadata_overrides_and_ttl(sidecar: Sidecar) -> None:
    query = (
        "metadata.cloudevent.id=e1&metadata.cloudevent.type=t&metadata.cloudevent.source=s"
        "&metadata.cloudevent.subject=sub&metadata.ttlInSeconds=60"
    )
    reply = await call(sidecar.app, "POST", f"/v1.0/publish/pubsub/a/b?{query}", body=b"x")
    assert reply.status == 204
    (message,) = await sidecar.held("a/b")
    event = orjson.loads(message.data)
    overridden = (event["id"], event["type"], event["source"], event["subject"])
    assert overridden == ("e1", "t", "s", "sub")
    assert event["expiration"].endswith("Z")
    assert message.metadata["ttlInSeconds"] == "60"


async def test_publish_raw_payload_stores_the_bytes_as_sent(sidecar: Sidecar) -> None:
    reply = await call(
        sidecar.app, "POST", "/v1.0/publish/pubsub/raw?metadata.rawPayload=true", body=b"\x01raw"
    )
    assert reply.status == 204
    (message,) = await sidecar.held("raw")
    assert message.data == b"\x01raw"


@pytest.mark.parametrize(
    ("method", "url", "body", "status", "code"),
    [
        ("POST", "/v1.0/publish/nope/orders", b"{}", 404, "ERR_PUBSUB_NOT_FOUND"),
        ("POST", "/v1.0/publish//orders", b"{}", 404, "ERR_PUBSUB_EMPTY"),
        ("POST", "/v1.0/publish/pubsub/", b"{}", 404, "ERR_TOPIC_NAME_EMPTY"),
        ("POST", "/v1.0/publish/pubsub/bad topic", b"{}", 400, "ERR_MALFORMED_REQUEST"),
        ("POST", "/v1.0/publish/pubsub/t*", b"{}", 400, "ERR_MALFORMED_REQUEST"),
        (
            "POST",
            "/v1.0/publish/pubsub/t?metadata.ttlInSeconds=soon",
            b"{}",
            400,
            "ERR_PUBSUB_REQUEST_METADATA",
        ),
        (
            "POST",
            "/v1.0/publish/pubsub/t?metadata.rawPayload=maybe",
            b"{}",
            400,
            "ERR_PUBSUB_REQUEST_METADATA",
        ),
        ("POST", "/v1.0-alpha1/publish/bulk/pubsub/t", b"[{", 400, "ERR_MALFORMED_REQUEST"),
        ("POST", "/v1.0-alpha1/publish/bulk/pubsub/t", b"{}", 400, "ERR_PUBSUB_EVENTS_SER"),
        ("POST", "/v1.0/publish/bulk/pubsub/t", b'[{"event": 1}]', 400, "ERR_PUBSUB_EVENTS_SER"),
        ("POST", "/v1.0/publish/bulk/nope/t", b"[]", 404, "ERR_PUBSUB_NOT_FOUND"),
    ],
)
async def test_errors_have_dapr_codes_and_statuses(
    sidecar: Sidecar, method: str, url: str, body: bytes, status: int, code: str
) -> None:
    reply = await call(sidecar.app, method, url, body=body)
    assert reply.status == status, reply.body
    error = reply.json()
    assert error["errorCode"] == code
    assert error["message"]
    assert reply.headers["content-type"] == "application/json"


async def test_a_caller_cloudevent_that_is_not_an_object_is_a_serialization_error(
    sidecar: Sidecar,
) -> None:
    for body in (b"[1, 2]", b"{broken"):
        reply = await call(
            sidecar.app,
            "POST",
            "/v1.0/publish/pubsub/t",
            body=body,
            headers={"content-type": "application/cloudevents+json"},
        )
        assert reply.status == 500
        assert reply.json()["errorCode"] == "ERR_PUBSUB_CLOUD_EVENTS_SER"


async def test_a_broker_failure_is_a_publish_error_and_the_api_keeps_serving(
    sidecar: Sidecar,
) -> None:
    await sidecar.broker.close()
    reply = await call(sidecar.app, "POST", "/v1.0/publish/pubsub/t", body=b"x")
    assert reply.status == 500
    assert reply.json()["errorCode"] == "ERR_PUBSUB_PUBLISH_MESSAGE"
    bulk = [{"entryId": "1", "event": "a"}, {"entryId": "2", "event": {"b": 1}}]
    reply = await call(
        sidecar.app, "POST", "/v1.0-alpha1/publish/bulk/pubsub/t", body=orjson.dumps(bulk)
    )
    assert reply.status == 500
    body = reply.json()
    assert body["errorCode"] == "ERR_PUBSUB_PUBLISH_MESSAGE"
    assert [e["entryId"] for e in body["failedEntries"]] == ["1", "2"]
    assert all(e["error"] for e in body["failedEntries"])
    assert (await call(sidecar.app, "GET", "/v1.0/metadata")).status == 200


@pytest.mark.parametrize("prefix", ["/v1.0-alpha1", "/v1.0"])
async def test_bulk_publish_gives_each_entry_its_envelope(sidecar: Sidecar, prefix: str) -> None:
    entries = [
        {"entryId": "1", "event": {"n": 1}, "contentType": "application/json"},
        {"entryId": "2", "event": "two", "contentType": "text/plain"},
        {"entryId": "3", "event": "raw", "metadata": {"rawPayload": "true"}},
        {
            "entryId": "4",
            "event": {"id": "ce-4", "type": "x", "source": "s", "specversion": "1.0"},
            "contentType": "application/cloudevents+json",
        },
    ]
    reply = await call(
        sidecar.app,
        "POST",
        f"{prefix}/publish/bulk/pubsub/many?metadata.cloudevent.subject=all",
        body=orjson.dumps(entries),
    )
    assert reply.status == 204, reply.body
    first, second, third, fourth = await sidecar.held("many")
    assert orjson.loads(first.data)["data"] == {"n": 1}
    assert orjson.loads(first.data)["subject"] == "all"
    assert orjson.loads(second.data)["data"] == "two"
    assert third.data == b"raw"
    assert orjson.loads(fourth.data)["id"] == "ce-4" == fourth.id


async def test_token_guards_everything_but_health() -> None:
    made = await _sidecar(token="s3cret")
    try:
        reply = await call(made.app, "POST", "/v1.0/publish/pubsub/t", body=b"x")
        assert (reply.status, reply.body) == (401, b"invalid api token")
        wrong = {"dapr-api-token": "guess"}
        reply = await call(made.app, "GET", "/v1.0/metadata", headers=wrong)
        assert reply.status == 401
        ok = {"dapr-api-token": "s3cret"}
        assert (await call(made.app, "POST", "/v1.0/publish/pubsub/t", headers=ok)).status == 204
        assert (await call(made.app, "GET", "/v1.0/healthz")).status == 204
        assert (await call(made.app, "GET", "/v1.0/healthz/outbound")).status == 204
    finally:
        await made.state.pubsubs.close()


@pytest.mark.parametrize("chunks", [0, 4])
async def test_body_limit_answers_413_and_keeps_serving(sidecar: Sidecar, chunks: int) -> None:
    big = b"x" * 1025
    reply = await call(sidecar.app, "POST", "/v1.0/publish/pubsub/t", body=big, chunks=chunks)
    assert reply.status == 413
    assert reply.json()["errorCode"] == "ERR_BODY_TOO_LARGE"
    exact = b"x" * 1024
    reply = await call(sidecar.app, "POST", "/v1.0/publish/pubsub/t", body=exact, chunks=chunks)
    assert reply.status == 204
    assert [orjson.loads(m.data)["data"] for m in await sidecar.held("t")] == ["x" * 1024]


async def test_health_follows_readiness(sidecar: Sidecar) -> None:
    state = sidecar.state
    state.app_port = 6000
    reply = await call(sidecar.app, "GET", "/v1.0/healthz")
    assert (reply.status, reply.json()["errorCode"]) == (500, "ERR_HEALTH_NOT_READY")
    assert (await call(sidecar.app, "GET", "/v1.0/healthz/outbound")).status == 204
    state.app_ready = True
    assert (await call(sidecar.app, "GET", "/v1.0/healthz")).status == 204
    reply = await call(sidecar.app, "GET", "/v1.0/healthz?appid=other")
    assert reply.json()["errorCode"] == "ERR_HEALTH_APPID_NOT_MATCH"
    state.api_ready = False
    reply = await call(sidecar.app, "GET", "/v1.0/healthz/outbound")
    assert (reply.status, reply.json()["errorCode"]) == (500, "ERR_OUTBOUND_HEALTH_NOT_READY")


async def test_metadata_lists_components_and_subscriptions(sidecar: Sidecar) -> None:
    sidecar.state.app_port = 6000
    sidecar.state.subscriptions.append(
        SubscriptionSpec(
            pubsubname="pubsub",
            topic="orders",
            routes=Routes(rules=(RouteRule('event.type == "big"', "/big"),), default="/orders"),
            dead_letter_topic="poison",
            type="PROGRAMMATIC",
        )
    )
    body = (await call(sidecar.app, "GET", "/v1.0/metadata")).json()
    assert body["id"] == APP_ID
    assert body["components"] == [
        {
            "name": "pubsub",
            "type": "pubsub.in-memory",
            "version": "v1",
            "capabilities": ["BULK_PUBLISH"],
        }
    ]
    (subscription,) = body["subscriptions"]
    assert subscription["type"] == "PROGRAMMATIC"
    assert subscription["deadLetterTopic"] == "poison"
    assert subscription["rules"] == [
        {"match": 'event.type == "big"', "path": "/big"},
        {"match": "", "path": "/orders"},
    ]
    assert body["appConnectionProperties"]["port"] == 6000


async def test_shutdown_asks_the_sidecar_to_stop(sidecar: Sidecar) -> None:
    asked: list[bool] = []
    sidecar.state.request_shutdown = lambda: asked.append(True)
    assert (await call(sidecar.app, "POST", "/v1.0/shutdown")).status == 204
    assert asked == [True]


async def test_raw_payload_bytes_survive_base64(sidecar: Sidecar) -> None:
    payload = bytes(range(256))
    url = "/v1.0/publish/pubsub/bin?metadata.rawPayload=1"
    assert (await call(sidecar.app, "POST", url, body=payload)).status == 204
    (message,) = await sidecar.held("bin")
    assert base64.b64encode(message.data) == base64.b64encode(payload)


async def test_extended_metadata_is_set_and_shown(sidecar: Sidecar) -> None:
    reply = await call(sidecar.app, "PUT", "/v1.0/metadata/team", body=b"payments")
    assert reply.status == 204
    body = (await call(sidecar.app, "GET", "/v1.0/metadata")).json()
    assert body["extended"] == {"team": "payments"}
    reply = await call(sidecar.app, "PUT", "/v1.0/metadata/bin", body=b"\xff")
    assert (reply.status, reply.json()["errorCode"]) == (400, "ERR_MALFORMED_REQUEST")
