"""Pub/sub topic scoping as Dapr reads it: publishing/subscription scopes, allowed, protected."""

from __future__ import annotations

import orjson
import pytest

from bus.memory import MemoryBroker, MemoryHub
from components.specs import Routes, SubscriptionSpec
from runtime.api.app import SidecarState, build_app
from runtime.channel import AppChannel
from runtime.pubsub.components import PubSubs
from runtime.pubsub.scopes import TopicScopes
from runtime.pubsub.subscribing import open_subscriptions
from tests.runtime_asgi import Component, call

METADATA = {
    "publishingScopes": "app1=topic1;app2=topic2,topic3;app3=",
    "subscriptionScopes": "app1=topic1;app2=secret",
    "protectedTopics": "secret",
}


@pytest.mark.parametrize(
    ("app_id", "topic", "publish", "subscribe"),
    [
        ("app1", "topic1", True, True),
        ("app1", "topic2", False, False),
        ("app2", "topic3", True, False),
        ("app3", "topic1", False, True),  # app3= : may publish nothing; not in subscriptionScopes
        ("app4", "anything", True, True),  # not listed anywhere: every topic
        ("app4", "secret", False, False),  # ...but not a protected one
        ("app2", "secret", False, True),  # protected, granted for subscribing only
    ],
)
def test_scopes(app_id: str, topic: str, publish: bool, subscribe: bool) -> None:
    scopes = TopicScopes.from_metadata(METADATA, app_id)
    assert scopes.can_publish(topic) is publish
    assert scopes.can_subscribe(topic) is subscribe


def test_allowed_topics_limit_every_app() -> None:
    scopes = TopicScopes.from_metadata({"allowedTopics": "a, b"}, "any")
    assert scopes.can_publish("a") and scopes.can_subscribe("b")
    assert not scopes.can_publish("c") and not scopes.can_subscribe("c")
    assert TopicScopes.from_metadata({}, "any").can_publish("c")


async def test_publish_outside_the_scopes_is_forbidden_and_subscriptions_are_skipped() -> None:
    broker = MemoryBroker(MemoryHub())
    scopes = {"pubsub": TopicScopes.from_metadata(METADATA, "app1")}
    pubsubs = PubSubs([Component("pubsub", broker)], scopes)
    await pubsubs.connect()
    try:
        app = build_app(SidecarState(app_id="app1", pubsubs=pubsubs, api_ready=True))
        assert (await call(app, "POST", "/v1.0/publish/pubsub/topic1", body=b"x")).status == 204
        for url in ("/v1.0/publish/pubsub/topic2", "/v1.0/publish/bulk/pubsub/topic2"):
            reply = await call(app, "POST", url, body=b"[]")
            assert reply.status == 403
            assert orjson.loads(reply.body)["errorCode"] == "ERR_PUBSUB_FORBIDDEN"
        specs = [
            SubscriptionSpec(pubsubname="pubsub", topic=t, routes=Routes(default="/in"))
            for t in ("topic1", "topic2")
        ]
        async with AppChannel("127.0.0.1", 9) as channel:
            running = await open_subscriptions(specs, pubsubs, channel, "app1")
            assert [s.topic for s in running] == ["topic1"]
    finally:
        await pubsubs.close()
