"""While the doorbell rings, polling slows down but still notices commits that did not ring."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from bus.message import Message, Outcome
from bus.options import RetryPolicy, SubscriptionOptions
from bus.sqlite import SqliteBroker, SqliteSettings
from bus.sqlite._store import SqliteStore
from tests.helpers import Collector, eventually


async def test_commits_without_a_ring_are_polled_while_the_doorbell_works(tmp_path: Path) -> None:
    # Given a consumer, a broker that rings it, and a writer that never rings (a lost datagram)
    db, topic = tmp_path / "bus.db", "mixed"
    settings = SqliteSettings(
        path=db, min_poll_interval=0.001, max_poll_interval=0.05, redeliver_interval=60.0
    )
    silent = SqliteStore(db, 5.0)
    async with SqliteBroker(settings) as consumer:
        collector = Collector()
        await consumer.subscribe(topic, collector, SubscriptionOptions(group="g"))
        async with SqliteBroker(settings) as ringer:
            silent.open()
            try:
                # When both commit, again and again, the rings keeping the polling slow
                for i in range(10):
                    await ringer.publish(topic, [Message(b"r", id=f"ring-{i}")])
                    silent.write([(topic, [Message(b"s", id=f"silent-{i}")])], [])
                    await asyncio.sleep(0.01)
                # Then every message arrives within the polling bound, long before redelivery
                seen = await collector.wait_for(20, timeout=5)
            finally:
                silent.close(None)
    assert sorted(m.id for m in seen) == sorted(
        [f"ring-{i}" for i in range(10)] + [f"silent-{i}" for i in range(10)]
    )


async def test_a_drained_consumer_waits_for_news_instead_of_claiming_again(tmp_path: Path) -> None:
    # Given a consumer whose polling and redelivery are too slow to matter, counting its claims
    settings = SqliteSettings(
        path=tmp_path / "bus.db",
        min_poll_interval=60.0,
        max_poll_interval=60.0,
        redeliver_interval=60.0,
    )
    async with SqliteBroker(settings) as broker:
        claims = 0
        claim = broker.store.claim

        def counted(*args: Any) -> Any:
            nonlocal claims
            claims += 1
            return claim(*args)

        broker.store.claim = counted  # type: ignore[method-assign,assignment]
        first_attempt = {"m": True}

        def outcome(message: Message) -> Outcome:
            # The first delivery asks for a retry: it is due again after a short backoff
            retry = first_attempt.pop(message.id, False)
            return Outcome.RETRY if retry else Outcome.SUCCESS

        collector = Collector(outcome)
        retry = RetryPolicy(initial_interval=0.2, jitter=0.0)
        await broker.subscribe("drain", collector, SubscriptionOptions(group="g", retry=retry))
        await eventually(lambda: claims == 1, timeout=5)  # the first, empty claim
        # When a message is published, taken in one claim and handed to the handler
        await broker.publish("drain", [Message(b"x", id="m")])
        # Then the retry's backoff still brings it back, long before the redelivery interval
        await collector.wait_for(2, timeout=5)
        assert [m.attempt for m in collector.seen] == [1, 2]
        await asyncio.sleep(0.3)
        # And the file was asked only when there was news: the first claim, the message, the
        # retry's wake-up (not due yet) and its due time; never again after a drained claim
        assert claims == 4
