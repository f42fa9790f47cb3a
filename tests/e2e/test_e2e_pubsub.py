"""Publish through one sidecar, deliver through another: real processes on every pub/sub type."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.conftest import Cluster, PubSubKind, wait_until

pytestmark = [pytest.mark.e2e]


# Dapr reads GET /dapr/subscribe with Go's JSON decoder: apps (and SDKs) spell the fields freely.
SPELLINGS = {
    "dapr": ("pubsubname", "topic", "route"),
    "capitalized": ("PubsubName", "Topic", "Route"),
}


@pytest.mark.parametrize("names", SPELLINGS.values(), ids=SPELLINGS.keys())
def test_publish_on_one_sidecar_is_delivered_by_another(
    cluster: Cluster, pubsub: PubSubKind, names: tuple[str, str, str]
) -> None:
    # Given a subscriber app with a programmatic subscription, behind its own sidecar
    topic = cluster.topic("orders")
    resources = cluster.resources(pubsub.component())
    app = cluster.app(subscriptions=[dict(zip(names, ("pubsub", topic, "/orders"), strict=True))])
    cluster.sidecar(cluster.app_id("sub"), resources, app=app)
    publisher = cluster.sidecar(cluster.app_id("pub"), resources)
    # When another sidecar publishes
    for n in range(20):
        publisher.publish(topic, {"n": n})
    # Then the app receives every event once, in order, in Dapr's envelope
    wait_until(lambda: len(app.received("/orders")) >= 20, what="20 deliveries")
    bodies = app.bodies("/orders")
    assert sorted(b["data"]["n"] for b in bodies) == list(range(20))  # delivered concurrently
    first = bodies[0]
    assert first["source"] == publisher.app_id
    assert (first["topic"], first["pubsubname"]) == (topic, "pubsub")
    assert first["type"] == "com.dapr.event.sent"
    headers = app.received("/orders")[0]["headers"]
    assert headers["Content-Type"] == "application/cloudevents+json"
    assert headers["traceparent"] == first["traceparent"]


def resiliency(max_retries: int = 3, duration: str = "100ms") -> str:
    """A Resiliency file giving the pubsub component a quick inbound retry policy."""
    return f"""\
apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata:
  name: quick
spec:
  policies:
    retries:
      quick:
        policy: constant
        duration: {duration}
        maxRetries: {max_retries}
  targets:
    components:
      pubsub:
        inbound:
          retry: quick
"""


def test_retry_then_success_and_drop_and_404_to_dead_letters(
    cluster: Cluster, pubsub: PubSubKind
) -> None:
    # Given routes that answer RETRY twice then SUCCESS, DROP, and a route the app does not have
    retried, dropped, missing = (cluster.topic(p) for p in ("retried", "dropped", "missing"))
    poison = cluster.topic("poison")
    subscriptions = [
        {"pubsubname": "pubsub", "topic": retried, "route": "/retry"},
        {"pubsubname": "pubsub", "topic": dropped, "route": "/drop", "deadLetterTopic": poison},
        {"pubsubname": "pubsub", "topic": missing, "route": "/nowhere"},
        {"pubsubname": "pubsub", "topic": poison, "route": "/poison"},
        {"pubsubname": "pubsub", "topic": f"{missing}.deadletter", "route": "/dead"},
    ]
    app = cluster.app(
        subscriptions, script={"/retry": "RETRY2", "/drop": "DROP", "/nowhere": "404"}
    )
    resources = cluster.resources(pubsub.component(), resiliency())
    sidecar = cluster.sidecar(cluster.app_id("sub"), resources, app=app)
    # When one event goes to each topic
    for topic in (retried, dropped, missing):
        sidecar.publish(topic, {"topic": topic})
    # Then the retried one arrives three times (same id) and is not dead-lettered,
    # the dropped one reaches the named dead-letter topic, the 404 one the default one
    wait_until(lambda: len(app.received("/retry")) >= 3, what="two retries")
    assert len({b["id"] for b in app.bodies("/retry")}) == 1
    wait_until(lambda: app.received("/poison"), what="the dropped event in the dead-letter topic")
    wait_until(lambda: app.received("/dead"), what="the 404 event in <topic>.deadletter")
    assert app.bodies("/poison")[0]["data"] == {"topic": dropped}
    assert app.bodies("/dead")[0]["data"] == {"topic": missing}
    assert len(app.received("/drop")) == 1
    assert len(app.received("/nowhere")) == 1
    assert len(app.received("/retry")) == 3


DECLARATIVE = """\
apiVersion: dapr.io/v2alpha1
kind: Subscription
metadata:
  name: widgets
spec:
  pubsubname: pubsub
  topic: {topic}
  routes:
    rules:
    - match: event.type == "widget"
      path: /widgets
    - match: event.data.amount > 10
      path: /big
    default: /other
scopes:
- {app_id}
"""


def test_declarative_subscription_with_cel_routing_and_scopes(
    cluster: Cluster, pubsub: PubSubKind
) -> None:
    # Given a v2alpha1 Subscription file scoped to one app
    topic = cluster.topic("widgets")
    app_id = cluster.app_id("shop")
    resources = cluster.resources(
        pubsub.component(), DECLARATIVE.format(topic=topic, app_id=app_id)
    )
    app = cluster.app()
    other = cluster.app()
    sidecar = cluster.sidecar(app_id, resources, app=app)
    cluster.sidecar(cluster.app_id("unscoped"), resources, app=other)
    # When events of each kind are published
    sidecar.publish(topic, {"amount": 1}, params={"metadata.cloudevent.type": "widget"})
    sidecar.publish(topic, {"amount": 50})
    sidecar.publish(topic, {"amount": 5})
    # Then the first matching rule picks the route, else the default
    wait_until(lambda: len(app.received()) >= 3, what="three routed events")
    routes = {line["path"]: line["body"]["data"]["amount"] for line in app.received()}
    assert routes == {"/widgets": 1, "/big": 50, "/other": 5}
    # And the app outside the scopes got nothing; metadata shows the subscription's type
    assert other.received() == []
    metadata = sidecar.get("/v1.0/metadata").json()
    (subscription,) = metadata["subscriptions"]
    assert subscription["type"] == "DECLARATIVE"
    assert subscription["rules"][0] == {"match": 'event.type == "widget"', "path": "/widgets"}


def test_bulk_publish_and_bulk_subscribe(cluster: Cluster, pubsub: PubSubKind) -> None:
    # Given a bulk subscription that drops the entry with n == 3
    topic = cluster.topic("bulk")
    subscriptions: list[dict[str, Any]] = [
        {
            "pubsubname": "pubsub",
            "topic": topic,
            "route": "/bulk",
            "bulkSubscribe": {"enabled": True, "maxMessagesCount": 10, "maxAwaitDurationMs": 200},
        },
        {"pubsubname": "pubsub", "topic": f"{topic}.deadletter", "route": "/dead"},
    ]
    app = cluster.app(subscriptions, script={"/bulk": "BULKDROP3"})
    resources = cluster.resources(pubsub.component())
    cluster.sidecar(cluster.app_id("sub"), resources, app=app)
    publisher = cluster.sidecar(cluster.app_id("pub"), resources)
    # When ten events are bulk-published in one request
    entries = [
        {"entryId": str(n), "event": {"n": n}, "contentType": "application/json"} for n in range(10)
    ]
    reply = publisher.post(f"/v1.0-alpha1/publish/bulk/pubsub/{topic}", json=entries)
    assert reply.status_code == 204, reply.text

    # Then the app gets them in bulk requests and the dropped entry is dead-lettered
    def entries_seen() -> list[int]:
        return [e["event"]["data"]["n"] for b in app.bodies("/bulk") for e in b["entries"]]

    wait_until(lambda: len(entries_seen()) >= 10, what="ten bulk entries")
    assert sorted(entries_seen()) == list(range(10))
    assert len(app.received("/bulk")) < 10
    first = app.bodies("/bulk")[0]
    assert first["type"] == "com.dapr.event.sent.bulk"
    assert first["pubsubname"] == "pubsub" and first["topic"] == topic
    wait_until(lambda: app.received("/dead"), what="the dropped entry")
    assert [b["data"]["n"] for b in app.bodies("/dead")] == [3]
