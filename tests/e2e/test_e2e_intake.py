"""Holding intake with real processes: nothing is pulled while the app is down or a breaker open."""

from __future__ import annotations

import time

import pytest

from tests.e2e.conftest import Cluster, PubSubKind, wait_until

pytestmark = [pytest.mark.e2e]

# One delivery only: an attempt made while the app is down would dead-letter the event at once.
NO_RETRIES = """\
apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata: {name: once}
spec:
  policies:
    retries:
      once: {policy: constant, duration: 100ms, maxRetries: 0}
  targets:
    components:
      pubsub: {inbound: {retry: once}}
"""
HEALTH_FLAGS = [
    "--enable-app-health-check",
    "--app-health-probe-interval", "0.1",
    "--app-health-probe-timeout", "500",
    "--app-health-threshold", "1",
]  # fmt: skip


def test_messages_wait_in_the_broker_while_the_app_is_unhealthy(
    cluster: Cluster, pubsub: PubSubKind
) -> None:
    # Given a subscriber whose sidecar probes its health, and which has exactly one attempt
    topic = cluster.topic("orders")
    resources = cluster.resources(pubsub.component(), NO_RETRIES)
    subscriptions = [{"pubsubname": "pubsub", "topic": topic, "route": "/orders"}]
    app = cluster.app(subscriptions=subscriptions)
    sidecar = cluster.sidecar(cluster.app_id("sub"), resources, app=app, args=HEALTH_FLAGS)
    publisher = cluster.sidecar(cluster.app_id("pub"), resources)
    publisher.publish(topic, {"n": 0})
    wait_until(lambda: len(app.received("/orders")) == 1, what="the first delivery")
    # When the app goes away, the sidecar stops pulling, and events are published meanwhile
    app.stop()
    wait_until(lambda: "the app is unhealthy" in sidecar.output(), what="the app unhealthy")
    for n in range(1, 6):
        publisher.publish(topic, {"n": n})
    # Then, once the app is back on its port, every event arrives: none was tried and lost
    back = cluster.app(subscriptions=subscriptions, port=app.port)
    wait_until(lambda: len(back.received("/orders")) == 6, what="six deliveries")
    assert sorted(b["data"]["n"] for b in back.bodies("/orders")) == list(range(6))
    assert "the app is healthy" in sidecar.output()


BREAKER = """\
apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata: {name: breaker}
spec:
  policies:
    retries:
      quick: {policy: constant, duration: 50ms, maxRetries: 10}
    circuitBreakers:
      inbound: {maxRequests: 1, timeout: 1s, trip: consecutiveFailures >= 2}
  targets:
    components:
      pubsub: {inbound: {retry: quick, circuitBreaker: inbound}}
"""


def test_an_open_inbound_breaker_pauses_deliveries(cluster: Cluster, pubsub: PubSubKind) -> None:
    # Given an app that answers RETRY to the first two deliveries of every event
    topic = cluster.topic("orders")
    resources = cluster.resources(pubsub.component(), BREAKER)
    subscriptions = [{"pubsubname": "pubsub", "topic": topic, "route": "/orders"}]
    app = cluster.app(subscriptions=subscriptions, script={"/orders": "RETRY2"})
    sidecar = cluster.sidecar(cluster.app_id("sub"), resources, app=app)
    # When one event fails twice, the breaker opens
    sidecar.publish(topic, {"n": 1})
    wait_until(lambda: len(app.received("/orders")) >= 2, what="two failed deliveries")
    opened = time.monotonic()
    wait_until(lambda: len(app.received("/orders")) >= 3, what="the half-open delivery")
    # Then the third attempt waited for the breaker's timeout, not the 50ms retry, and it closed it
    assert time.monotonic() - opened >= 0.8
    wait_until(
        lambda: "inbound circuit breaker of pubsub closed" in sidecar.output(), what="closed"
    )
    assert "inbound circuit breaker of pubsub open" in sidecar.output()
    assert len(app.received("/orders")) == 3
