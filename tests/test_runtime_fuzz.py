"""A seeded random-request run against a sidecar served by uvicorn over real sockets.

Every route, every verb, random bodies (JSON of random shape, bulk entries, CloudEvents, deep
nesting, bytes), random headers and ``metadata.*`` parameters.  Whatever comes in: no 5xx
without a Dapr error body, no traceback in the log, no broken connection, and the sidecar still
healthy at the end; the deliveries of accepted events to a raw app keep flowing, each framed and
addressed by the sidecar alone, whatever metadata the publisher chose.

``OMNIBUS_FUZZ_REQUESTS`` makes a longer run (the suite does 300), ``OMNIBUS_FUZZ_SEED`` another.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
import pytest

from bus.memory import MemoryBroker, MemoryHub
from components.specs import Routes, SubscriptionSpec
from runtime.api.app import SidecarState, build_app
from runtime.channel import AppChannel
from runtime.pubsub.components import PubSubs
from runtime.pubsub.subscribing import open_subscriptions
from tests.helpers import eventually
from tests.runtime_asgi import Component, served
from tests.test_runtime_http1 import RawServer

SEED = int(os.environ.get("OMNIBUS_FUZZ_SEED", "20261202"))
REQUESTS = int(os.environ.get("OMNIBUS_FUZZ_REQUESTS", "300"))
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
CONTENT_TYPES = [
    "application/json",
    "application/cloudevents+json",
    "text/plain",
    "application/octet-stream",
    "Application/JSON; charset=utf-8",
    "application/x-www-form-urlencoded",
    "garbage/\u00e9",
    "",
]
METADATA_KEYS = [
    "ttlInSeconds",
    "rawPayload",
    "cloudevent.id",
    "cloudevent.type",
    "routingKey",
    "Content-Length",
    "Transfer-Encoding",
    "Host",
    "content-type",
    "traceparent",
    "x-custom",
    "",
    "bad key",
]
METADATA_VALUES = [
    "",
    "0",
    "1",
    "-1",
    "true",
    "maybe",
    "99999999999999999999",
    "a\u00e9b",
    "%0d%0a",
]


def _json(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth > 4 or roll < 0.3:
        return rng.choice([None, True, 1, -2.5, 2**70, "s", "\u00e9\u4e2d", ""])
    if roll < 0.65:
        return [_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    keys = ["entryId", "entryID", "event", "contentType", "metadata", "id", "data", "status"]
    return {rng.choice(keys): _json(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def _dumps(value: Any) -> bytes:
    return json.dumps(value).encode()  # the stdlib: integers beyond 64 bits too


def _body(rng: random.Random) -> bytes:
    roll = rng.randrange(9)
    if roll == 0:
        return b""
    if roll == 1:
        return rng.randbytes(rng.randint(1, 300))
    if roll == 2:
        depth = rng.choice([150, 199, 201, 300, 1100, 5000])
        return rng.choice([b"[", b'{"a":']) * depth + b"]" * depth * rng.randint(0, 1)
    if roll == 3:
        entries = [
            {
                rng.choice(["entryId", "entryID", "EntryId", "id"]): rng.choice(["1", "2", "", 3]),
                "event": _json(rng),
                "contentType": rng.choice(CONTENT_TYPES + [None, 5]),
                "metadata": rng.choice([{}, {"rawPayload": "true"}, {"a": 1}, "x", None]),
            }
            for _ in range(rng.randint(0, 4))
        ]
        return _dumps(entries)
    if roll == 4:
        event = {"specversion": "1.0", "id": rng.choice(["e", "", 5]), "data": _json(rng)}
        return _dumps(event)
    if roll == 5:
        return b"x" * rng.randint(2000, 70_000)  # some over the limit
    if roll == 7:
        return b"[" * 3000 + b"]" * 3000
    return _dumps(_json(rng))


def _path(rng: random.Random) -> str:
    # mostly names that exist, so that requests get past the lookups to the bodies
    pubsub = rng.choice(["pubsub"] * 6 + ["nope", "", "pub%20sub"])
    topic = rng.choice(["orders"] * 6 + ["a/b", "", "t%00x", "..", "x" * 300, "\u00e9"])
    store = rng.choice(["statestore", "nope", ""])
    return rng.choice(
        [
            *[f"/v1.0/publish/{pubsub}/{topic}"] * 6,  # the hot path, and the most varied
            *[f"/v1.0/publish/bulk/{pubsub}/{topic}"] * 2,
            *[f"/v1.0-alpha1/publish/bulk/{pubsub}/{topic}"] * 2,
            "/v1.0/healthz",
            "/v1.0/healthz/outbound",
            "/v1.0/metadata",
            f"/v1.0/metadata/{rng.choice(['k', '', 'a%2Fb'])}",
            f"/v1.0/state/{store}",
            f"/v1.0/state/{store}/bulk",
            f"/v1.0/state/{store}/transaction",
            f"/v1.0/state/{store}/{rng.choice(['key', 'a/b', ''])}",
            f"/v1.0-alpha1/state/{store}/query",
            f"/v1.0/invoke/{rng.choice(['other', 'checkout', ''])}/method/{topic}",
            "/v1.0-alpha1/invocations",
            f"/v1.0-alpha1/invocations/{rng.choice(['x', ''])}",
            "/v1.0/openapi.json",
            "/" + "".join(rng.choice("abc/%?.") for _ in range(rng.randint(0, 12))),
        ]
    )


def _query(rng: random.Random) -> str:
    pairs = [
        quote(f"metadata.{rng.choice(METADATA_KEYS)}", safe="%.")
        + "="
        + quote(rng.choice(METADATA_VALUES), safe="%")  # "%0d%0a" stays a CR LF to decode
        for _ in range(rng.choice([0, 0, 0, 1, 2, 4]))
    ]
    if rng.random() < 0.1:
        pairs.append("appid=" + rng.choice(["checkout", "other"]))
    return "&".join(pairs)


def _headers(rng: random.Random) -> dict[str, str]:
    headers = {"content-type": rng.choice(CONTENT_TYPES)}
    if rng.random() < 0.3:
        headers["traceparent"] = rng.choice(["00-" + "a" * 32 + "-" + "b" * 16 + "-01", "x", ""])
    if rng.random() < 0.2:
        headers["dapr-app-id"] = rng.choice(["other", "checkout", ""])
    if rng.random() < 0.2:
        headers["x-" + str(rng.randint(0, 9))] = rng.choice(METADATA_VALUES)
    return headers


@dataclass
class Fuzzed:
    url: str  # the sidecar
    app: RawServer  # receives the deliveries of topic "orders", byte for byte


@pytest.fixture
async def fuzzed() -> AsyncIterator[Fuzzed]:
    broker = MemoryBroker(MemoryHub())
    pubsubs = PubSubs([Component("pubsub", broker)])
    await pubsubs.connect()
    state = SidecarState(app_id="checkout", pubsubs=pubsubs, api_ready=True)
    app = await RawServer(_accept).__aenter__()
    channel = await AppChannel("127.0.0.1", app.port).__aenter__()
    spec = SubscriptionSpec(pubsubname="pubsub", topic="orders", routes=Routes(default="/events"))
    (subscription,) = await open_subscriptions([spec], pubsubs, channel, "checkout")
    async with served(build_app(state, max_body_size=64 * 1024)) as port:
        yield Fuzzed(f"http://127.0.0.1:{port}", app)
    await subscription.stop()
    await channel.close()
    await pubsubs.close()
    await app.__aexit__(None, None, None)


async def _accept(request: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


async def test_random_requests_never_break_the_sidecar(
    fuzzed: Fuzzed, caplog: pytest.LogCaptureFixture
) -> None:
    sidecar_url = fuzzed.url
    rng = random.Random(SEED)
    caplog.set_level(logging.WARNING)
    failures: list[str] = []
    async with aiohttp.ClientSession() as session:
        for i in range(REQUESTS):
            method, path, query = rng.choice(METHODS), _path(rng), _query(rng)
            if "/publish/" in path and rng.random() < 0.7:
                method = "POST"  # mostly what a publish is, so that many are delivered
            body = _body(rng) if method not in ("GET", "HEAD") or rng.random() < 0.1 else b""
            target = quote(path, safe="/%?.=&")
            url = f"{sidecar_url}{target}" + (f"?{query}" if query else "")
            async with session.request(
                method, aiohttp.client.URL(url, encoded=True), data=body, headers=_headers(rng)
            ) as reply:
                answer = await reply.read()
                if reply.status >= 500 and not _dapr_error(method, reply, answer):
                    failures.append(f"#{i} {method} {url}: {reply.status} {answer[:200]!r}")
        async with session.get(f"{sidecar_url}/v1.0/healthz") as reply:
            assert reply.status == 204
        marker = f"{sidecar_url}/v1.0/publish/pubsub/orders"
        async with session.post(marker, json={"marker": "end"}) as reply:
            assert reply.status == 204
    # deliveries still flow, and none was framed or addressed by what a publisher chose
    await eventually(lambda: any(b'"marker"' in r for r in fuzzed.app.requests))
    for request in fuzzed.app.requests:
        _assert_framed_by_the_sidecar(request)
    assert len(fuzzed.app.requests) > REQUESTS // 30  # it did publish events that were delivered
    assert failures == []
    tracebacks = [r.getMessage() for r in caplog.records if r.exc_info or r.levelno >= 40]
    assert tracebacks == []


def _dapr_error(method: str, reply: aiohttp.ClientResponse, answer: bytes) -> bool:
    if method == "HEAD":
        return reply.headers.get("content-type", "").startswith("application/json")
    try:
        error = orjson.loads(answer)
    except orjson.JSONDecodeError:
        return False
    return isinstance(error, dict) and bool(error.get("errorCode")) and bool(error.get("message"))


def _assert_framed_by_the_sidecar(request: bytes) -> None:
    head = request.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]
    names = [line.split(b":", 1)[0].strip().lower() for line in head]
    for own in (b"content-length", b"host", b"content-type", b"pubsubname"):
        assert names.count(own) == 1, request[:600]
    assert names.count(b"traceparent") <= 1, request[:600]
    for hop in (b"transfer-encoding", b"connection", b"te", b"upgrade", b"expect", b"keep-alive"):
        assert hop not in names, request[:600]
    assert b"content-type: application/cloudevents+json" in request.lower()
