"""A subscriber sidecar SIGKILLed mid-stream and restarted loses nothing."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import Cluster, PubSubKind, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_sigkilled_sidecar_restarted_delivers_every_message(
    cluster: Cluster, pubsub: PubSubKind
) -> None:
    # Given a subscriber sidecar whose leases run out quickly, and a publisher sidecar
    topic = cluster.topic("chaos")
    app = cluster.app(
        [{"pubsubname": "pubsub", "topic": topic, "route": "/in"}], script={"/in": "SLOW50"}
    )
    # Where the component has it, the dead sidecar's deliveries are looked for every second
    # (Redis's default is every 15 s, which left the test waiting half its time-out for three
    # messages under a loaded CI)
    prompt = {"redeliverInterval": "1s"} if pubsub.type in ("pubsub.redis", "pubsub.sqlite") else {}
    resources = cluster.resources(pubsub.component(processingTimeout="2s", **prompt))
    app_id = cluster.app_id("sub")
    subscriber = cluster.sidecar(app_id, resources, app=app)
    publisher = cluster.sidecar(cluster.app_id("pub"), resources)
    # When the subscriber is killed -9 while deliveries are under way (one bulk publish, so the
    # stream is in the broker before the slow app can have taken it all, however busy the machine)
    publisher.publish_bulk(topic, [{"n": n} for n in range(150)])
    wait_until(lambda: len(app.received("/in")) >= 20, what="deliveries under way")
    subscriber.kill()
    assert len(app.received("/in")) < 150, "the kill came after the stream had ended"
    # And more is published while it is down, then it restarts on the same port
    for n in range(150, 250):
        publisher.publish(topic, {"n": n})
    cluster.sidecar(app_id, resources, app=app, port=subscriber.port)
    for n in range(250, 300):
        publisher.publish(topic, {"n": n})

    # Then every published event reached the app at least once
    def missing() -> set[int]:
        return set(range(300)) - {b["data"]["n"] for b in app.bodies("/in")}

    wait_until(lambda: not missing(), timeout=30, what="all 300 events")
