"""The SQLite broker trims acked messages a chunk at a time, so the write lock is held briefly."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bus.message import Message
from bus.options import SubscriptionOptions
from bus.sqlite import SqliteBroker, SqliteSettings
from bus.sqlite._store import SqliteStore
from bus.sqlite.broker import TRIM_CHUNK
from tests.helpers import Collector


def test_a_chunked_trim_deletes_at_most_a_chunk_of_acked_messages_per_topic(
    tmp_path: Path,
) -> None:
    store = SqliteStore(tmp_path / "bus.db", busy_timeout=1.0)
    store.open()
    try:
        for topic in ("held", "acked"):
            store.ensure_group(topic, "g")
            store.write([(topic, [Message(data=b"x") for _ in range(25)])], [])
        # Given 25 messages held by a consumer and 25 acked ones
        assert len(store.claim("held", "g", "c", 25, 30.0)[0]) == 25
        batch = store.claim("acked", "g", "c", 25, 30.0)[0]
        store.ack("acked", "g", [d.seq for d in batch], "c")
        # When trimmed in chunks of 10, then only acked messages go, at most 10 per call
        counts = [store.trim(["held", "acked"], chunk=10) for _ in range(4)]
        assert counts == [10, 10, 5, 0]
        assert (store.retained("acked"), store.retained("held")) == (0, 25)
    finally:
        store.close(None)


async def test_the_broker_trims_a_backlog_larger_than_a_chunk_completely(tmp_path: Path) -> None:
    settings = SqliteSettings(path=tmp_path / "bus.db", trim_interval=0.05)
    count = TRIM_CHUNK * 3 + 7
    async with SqliteBroker(settings) as broker:
        collector = Collector()
        await broker.subscribe("big", collector, SubscriptionOptions(group="g"))
        await broker.publish("big", [Message(data=b"x") for _ in range(count)])
        await collector.wait_for(count, timeout=10)
        for _ in range(100):
            if await broker.retained("big") == 0:
                break
            await asyncio.sleep(0.05)
        assert await broker.retained("big") == 0
