"""Delivery to the app over a real HTTP app channel: statuses, routing, TTL, raw, bulk."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web

from bus.memory import MemoryBroker, MemoryHub
from bus.message import Outcome
from components.specs import BulkSubscribe, RouteRule, Routes, SubscriptionSpec
from runtime.api.publish import query_metadata
from runtime.channel import AppChannel
from runtime.pubsub.app_delivery import outcome_of
from runtime.pubsub.bulk_delivery import entry_outcomes
from runtime.pubsub.components import PubSubs
from runtime.pubsub.publisher import PublishContext, make_message
from runtime.pubsub.subscribing import (
    open_subscriptions,
    subscription_options,
    unique_subscriptions,
)
from tests.helpers import eventually
from tests.runtime_asgi import Component
from tests.test_runtime_http1 import RawServer, ok

Answer = Callable[[dict[str, Any], int], web.Response]


@dataclass
class App:
    """A real HTTP app recording what it receives; ``answer`` decides the reply."""

    answer: Answer = lambda event, count: web.Response(status=200)
    received: list[tuple[str, dict[str, Any], dict[str, str]]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        self.received.append((request.path, body, dict(request.headers)))
        return self.answer(body, len(self.received))

    def paths(self) -> list[str]:
        return [path for path, _, _ in self.received]


@dataclass
class World:
    app: App
    channel: AppChannel
    pubsubs: PubSubs
    broker: MemoryBroker

    async def subscribe(self, spec: SubscriptionSpec) -> None:
        (running,) = await open_subscriptions([spec], self.pubsubs, self.channel, "orders-app")
        assert running.running

    async def publish(
        self,
        topic: str,
        body: bytes,
        metadata: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> str:
        ctx = PublishContext("pubsub", topic, "publisher")
        message = make_message(body, content_type, metadata or {}, ctx)
        await self.pubsubs.publisher("pubsub").publish(topic, [message])
        return message.id

    async def dead_letters(self, topic: str) -> list[str]:
        return [m.id for m in await self.broker.browse(topic)]


def spec(topic: str, **kwargs: Any) -> SubscriptionSpec:
    routes = kwargs.pop("routes", Routes(default="/events"))
    return SubscriptionSpec(pubsubname="pubsub", topic=topic, routes=routes, **kwargs)


@pytest.fixture
async def world() -> AsyncIterator[World]:
    app = App()
    server = web.Application()
    server.router.add_post("/{tail:.*}", app.handle)
    runner = web.AppRunner(server, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    broker = MemoryBroker(MemoryHub())
    pubsubs = PubSubs([Component("pubsub", broker)])
    await pubsubs.connect()
    async with AppChannel("127.0.0.1", port, max_concurrency=4, app_api_token="app-secret") as ch:
        yield World(app, ch, pubsubs, broker)
        await pubsubs.close()
    await runner.cleanup()


@pytest.mark.parametrize(
    ("status", "body", "outcome"),
    [
        (200, b"", Outcome.SUCCESS),
        (204, b"", Outcome.SUCCESS),
        (200, b"not json", Outcome.SUCCESS),
        (200, b'{"other": 1}', Outcome.SUCCESS),
        (200, b'{"status": ""}', Outcome.SUCCESS),
        (200, b'{"status": "SUCCESS"}', Outcome.SUCCESS),
        (200, b'{"status": "DROP"}', Outcome.DROP),
        (200, b'{"status": "RETRY"}', Outcome.RETRY),
        (200, b'{"status": "success"}', Outcome.RETRY),
        (200, b'{"status": "PARTY"}', Outcome.RETRY),
        (404, b"", Outcome.DROP),
        (500, b'{"status": "SUCCESS"}', Outcome.RETRY),
        (400, b"", Outcome.RETRY),
    ],
)
def test_app_answers_map_to_outcomes_as_in_dapr(status: int, body: bytes, outcome: Outcome) -> None:
    assert outcome_of(status, body) is outcome


def test_bulk_answers_map_per_entry() -> None:
    body = (
        b'{"statuses": [{"entryId": "a", "status": "SUCCESS"}, {"entryId": "b", "status": "DROP"}]}'
    )
    assert entry_outcomes(200, body, ["a", "b", "c"]) == {
        "a": Outcome.SUCCESS,
        "b": Outcome.DROP,
        "c": Outcome.RETRY,
    }
    assert set(entry_outcomes(200, b"[]", ["a"]).values()) == {Outcome.RETRY}
    assert set(entry_outcomes(404, b"", ["a", "b"]).values()) == {Outcome.DROP}
    assert set(entry_outcomes(503, b"", ["a"]).values()) == {Outcome.RETRY}


async def test_delivery_posts_the_envelope_with_headers(world: World) -> None:
    await world.subscribe(spec("orders"))
    event_id = await world.publish("orders", b'{"n": 1}', {"partitionKey": "p1"})
    await eventually(lambda: world.app.received)
    path, event, headers = world.app.received[0]
    assert path == "/events"
    assert (event["id"], event["data"], event["topic"]) == (event_id, {"n": 1}, "orders")
    assert headers["Content-Type"] == "application/cloudevents+json"
    assert headers["pubsubName"] == "pubsub"
    assert headers["partitionKey"] == "p1"
    assert headers["traceparent"] == event["traceparent"]
    assert headers["dapr-api-token"] == "app-secret"


async def test_retry_then_success_redelivers_the_same_id(world: World) -> None:
    world.app.answer = lambda event, n: web.json_response({"status": "RETRY" if n < 3 else ""})
    await world.subscribe(spec("orders"))
    event_id = await world.publish("orders", b"1")
    await eventually(lambda: len(world.app.received) == 3)
    assert {event["id"] for _, event, _ in world.app.received} == {event_id}
    await asyncio.sleep(0.1)
    assert len(world.app.received) == 3
    assert await world.dead_letters("orders.deadletter") == []


@pytest.mark.parametrize(
    "answer",
    [lambda e, n: web.json_response({"status": "DROP"}), lambda e, n: web.Response(status=404)],
    ids=["DROP", "404"],
)
async def test_drop_and_404_go_to_the_dead_letter_topic(world: World, answer: Answer) -> None:
    world.app.answer = answer
    await world.subscribe(spec("orders", dead_letter_topic="poison"))
    event_id = await world.publish("orders", b"1")
    await eventually(lambda: world.dead_letters("poison"))
    assert await world.dead_letters("poison") == [event_id]
    assert len(world.app.received) == 1


async def test_cel_rules_pick_the_route_first_match_wins(world: World) -> None:
    routes = Routes(
        rules=(
            RouteRule('event.type == "widget"', "/widgets"),
            RouteRule("event.data.amount > 10", "/big"),
        ),
        default="/rest",
    )
    await world.subscribe(spec("orders", routes=routes))
    await world.publish("orders", b'{"amount": 50}', {"cloudevent.type": "widget"})
    await world.publish("orders", b'{"amount": 50}')
    await world.publish("orders", b'{"amount": 5}')
    await eventually(lambda: len(world.app.received) == 3)
    assert sorted(world.app.paths()) == ["/big", "/rest", "/widgets"]


async def test_unrouted_and_expired_events_are_acked_or_dead_lettered(world: World) -> None:
    routes = Routes(rules=(RouteRule("event.data.amount > 10", "/big"),))
    await world.subscribe(spec("plain", routes=routes))
    await world.subscribe(spec("lettered", routes=routes, dead_letter_topic="lettered.dlq"))
    for topic in ("plain", "lettered"):
        await world.publish(topic, b'{"amount": 1}')
    expired = await world.publish("lettered", b'{"amount": 99}', {"ttlInSeconds": "0"})

    async def both_dead_lettered() -> bool:
        return len(await world.dead_letters("lettered.dlq")) == 2

    await eventually(both_dead_lettered)
    assert expired in await world.dead_letters("lettered.dlq")
    assert world.app.received == []
    assert await world.dead_letters("plain.deadletter") == []


async def test_raw_payload_subscription_gets_base64_data(world: World) -> None:
    await world.subscribe(spec("raw", metadata={"rawPayload": "true"}))
    await world.subscribe(spec("wrapped"))
    await world.publish("raw", b"\x00bytes", {"rawPayload": "true"})
    await world.publish("raw", b'{"enveloped": true}')
    await world.publish("wrapped", b"plain bytes", {"rawPayload": "true"})
    await eventually(lambda: len(world.app.received) == 3)
    by_topic: dict[str, list[dict[str, Any]]] = {}
    for _, event, headers in world.app.received:
        by_topic.setdefault(event["topic"], []).append(event)
        assert headers["Content-Type"] == "application/cloudevents+json"
    first, second = by_topic["raw"]
    assert base64.b64decode(first["data_base64"]) == b"\x00bytes"
    assert first["datacontenttype"] == "application/octet-stream"
    assert orjson.loads(base64.b64decode(second["data_base64"]))["data"] == {"enveloped": True}
    (wrapped,) = by_topic["wrapped"]
    assert base64.b64decode(wrapped["data_base64"]) == b"plain bytes"


async def test_bulk_subscribe_batches_and_reads_statuses(world: World) -> None:
    def answer(body: dict[str, Any], count: int) -> web.Response:
        statuses = []
        for entry in body["entries"]:
            n = entry["event"]["data"]["n"]
            status = "DROP" if n == 3 else "RETRY" if n == 4 and count == 1 else "SUCCESS"
            statuses.append({"entryId": entry["entryId"], "status": status})
        return web.json_response({"statuses": statuses})

    world.app.answer = answer
    bulk = BulkSubscribe(enabled=True, max_messages=5, max_await_ms=50)
    await world.subscribe(spec("bulk", bulk=bulk, dead_letter_topic="bulk.dlq"))
    ctx = PublishContext("pubsub", "bulk", "publisher")
    messages = [make_message(orjson.dumps({"n": n}), "application/json", {}, ctx) for n in range(5)]
    await world.pubsubs.publisher("pubsub").publish("bulk", messages)  # one batch: deterministic
    ids = [m.id for m in messages]
    await eventually(lambda: len(world.app.received) == 2)
    path, first, headers = world.app.received[0]
    assert path == "/events"
    assert headers["Content-Type"] == "application/json"
    assert first["type"] == "com.dapr.event.sent.bulk"
    assert (first["topic"], first["pubsubname"]) == ("bulk", "pubsub")
    assert [e["entryId"] for e in first["entries"]] == ids
    assert all(e["contentType"] == "application/cloudevents+json" for e in first["entries"])
    _, second, _ = world.app.received[1]
    assert [e["entryId"] for e in second["entries"]] == [ids[4]]  # only the retried one
    assert await world.dead_letters("bulk.dlq") == [ids[3]]


def test_bulk_subscriptions_may_hold_two_batches_at_once() -> None:
    """One batch fills while the app handles the one before, not after it."""
    component = Component("pubsub", MemoryBroker(MemoryHub()))
    bulk = BulkSubscribe(enabled=True, max_messages=100, max_await_ms=40)
    options = subscription_options(spec("t", bulk=bulk), component, "orders-app")
    assert (options.concurrency, options.batch_size) == (200, 100)
    plain = subscription_options(spec("t"), component, "orders-app")
    assert (plain.concurrency, plain.batch_size) == (10, 100)


async def test_an_unreachable_app_means_retry_until_dead_letter(world: World) -> None:
    channel = AppChannel("127.0.0.1", 9, max_concurrency=1)  # the discard port: nobody listens
    async with channel:
        await open_subscriptions([spec("lost")], world.pubsubs, channel, "orders-app")
        event_id = await world.publish("lost", b"1")

        async def dead_lettered() -> bool:
            return await world.dead_letters("lost.deadletter") == [event_id]

        await eventually(dead_lettered)


async def test_app_max_concurrency_bounds_calls_in_the_app(world: World) -> None:
    running = peak = calls = 0

    async def slow(request: web.Request) -> web.Response:
        nonlocal running, peak, calls
        calls += 1
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.02)
        running -= 1
        return web.Response(status=200)

    server = web.Application()
    server.router.add_post("/slow", slow)
    runner = web.AppRunner(server, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with AppChannel("127.0.0.1", port, max_concurrency=2) as channel:
            await open_subscriptions(
                [spec("busy", routes=Routes(default="/slow"))], world.pubsubs, channel, "app"
            )
            for n in range(12):
                await world.publish("busy", str(n).encode())
            await eventually(lambda: calls == 12 and running == 0)
    finally:
        await runner.cleanup()
    assert peak == 2  # the subscription's concurrency is 10; the channel lets 2 in at once


def test_a_second_subscription_to_the_same_topic_is_ignored() -> None:
    declarative = spec("orders")
    programmatic = SubscriptionSpec(
        pubsubname="pubsub", topic="orders", routes=Routes(default="/p"), type="PROGRAMMATIC"
    )
    other = spec("invoices")
    assert unique_subscriptions([declarative, programmatic, other]) == [declarative, other]


async def test_metadata_that_cannot_be_a_header_is_left_out(world: World) -> None:
    await world.subscribe(spec("odd"))
    odd = {"plain": "ok", "bad name": "x", "broken": "a\r\nInjected: 1", "text": "grüße"}
    await world.publish("odd", b"1", odd)
    await eventually(lambda: world.app.received)
    headers = world.app.received[0][2]
    assert headers["plain"] == "ok"
    assert "Injected" not in headers
    assert not {"bad name", "broken", "text"} & set(headers)


SMUGGLING = (
    b"metadata.Content-Length=0&metadata.Transfer-Encoding=chunked&metadata.Host=evil"
    b"&metadata.content-type=text/evil&metadata.TRACEPARENT=00-evil&metadata.dapr-api-token=stolen"
    b"&metadata.Connection=close&metadata.Keep-Alive=1&metadata.TE=trailers&metadata.Trailer=X"
    b"&metadata.Upgrade=h2c&metadata.Proxy-Authorization=x&metadata.Expect=100-continue"
    b"&metadata.pubsubname=other&metadata.X-Order=42&metadata.partitionKey=p1"
)


async def test_metadata_never_frames_the_delivery_or_overrides_sidecar_headers() -> None:
    received: list[bytes] = []

    async def record(request: bytes) -> bytes:
        received.append(request)
        return ok()

    broker = MemoryBroker(MemoryHub())
    pubsubs = PubSubs([Component("pubsub", broker)])
    await pubsubs.connect()
    async with (
        RawServer(record) as app,
        AppChannel("127.0.0.1", app.port, app_api_token="tok") as ch,
    ):
        (running,) = await open_subscriptions([spec("orders")], pubsubs, ch, "orders-app")
        ctx = PublishContext("pubsub", "orders", "publisher")
        message = make_message(b'{"n": 1}', "application/json", query_metadata(SMUGGLING), ctx)
        await pubsubs.publisher("pubsub").publish("orders", [message])
        await eventually(lambda: received)
        await pubsubs.close()
    head, _, body = received[0].partition(b"\r\n\r\n")
    lines = [line.split(b":", 1) for line in head.split(b"\r\n")[1:]]
    headers: dict[bytes, list[bytes]] = {}
    for name, value in lines:
        headers.setdefault(name.lower(), []).append(value.strip())
    event = orjson.loads(body)
    assert headers[b"content-length"] == [str(len(body)).encode()]
    assert headers[b"host"] == [f"127.0.0.1:{app.port}".encode()]
    assert headers[b"content-type"] == [b"application/cloudevents+json"]
    assert headers[b"traceparent"] == [event["traceparent"].encode()]
    assert headers[b"dapr-api-token"] == [b"tok"]
    assert headers[b"pubsubname"] == [b"pubsub"]
    for hop in (b"transfer-encoding", b"connection", b"keep-alive", b"te", b"trailer"):
        assert hop not in headers
    for hop in (b"upgrade", b"proxy-authorization", b"expect"):
        assert hop not in headers
    assert headers[b"x-order"] == [b"42"] and headers[b"partitionkey"] == [b"p1"]


async def test_a_traceparent_that_cannot_be_a_header_is_left_out(world: World) -> None:
    await world.subscribe(spec("orders"))
    bad = {"cloudevent.traceparent": "00-a\r\nHost: evil", "ttlInSeconds": "60"}  # read whole
    await world.publish("orders", b"{}", bad)
    await eventually(lambda: world.app.received)
    _, event, headers = world.app.received[0]
    assert event["traceparent"] == "00-a\r\nHost: evil"  # the event keeps what it was given
    assert "traceparent" not in headers and headers["Host"].startswith("127.0.0.1:")
