"""SQLite-specific behaviour: several OS processes on one file, SIGKILL, settings, trimming."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from bus.errors import BrokerUnavailable
from bus.message import Message
from bus.options import SubscriptionOptions
from bus.sqlite import SqliteBroker, SqliteSettings
from bus.sqlite._store import SqliteStore
from tests.helpers import Collector, eventually

ROOT = Path(__file__).resolve().parent.parent


class Peer:
    """A ``tests.sqlite_peer`` child process."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def wait_ready(self) -> None:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), 20)
        assert line.strip() == b"ready", f"peer did not start: {line!r}"

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process.returncode is None:
            self.process.send_signal(sig)
        return await asyncio.wait_for(self.process.wait(), 20)


Spawn = Callable[..., Awaitable[Peer]]


@pytest.fixture
async def spawn() -> AsyncIterator[Spawn]:
    """Start ``tests.sqlite_peer`` processes; any still running at the end is killed."""
    started: list[Peer] = []

    async def start(*args: str, ready: bool = True) -> Peer:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.sqlite_peer", *args, cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        peer = Peer(process)
        started.append(peer)
        if ready:
            await peer.wait_ready()
        return peer

    yield start
    for peer in started:
        await peer.stop(signal.SIGKILL)


def lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


# -- across OS processes --------------------------------------------------------------------


@pytest.mark.slow
async def test_sigkilled_consumer_loses_nothing(tmp_path: Path, spawn: Spawn) -> None:
    # Given a consumer process of group "workers" and a stream of 10,000 messages
    db, topic, total = tmp_path / "bus.db", "orders", 10_000
    first_out, second_out = tmp_path / "first.txt", tmp_path / "second.txt"
    slow = ("--delay", "0.01")  # a handler that takes a while keeps deliveries in flight
    first = await spawn("consume", str(db), topic, "workers", str(first_out), *slow)
    sent = [f"m-{i}" for i in range(total)]
    killed = asyncio.Event()
    async with SqliteBroker(SqliteSettings(path=db)) as publisher:

        async def stream() -> None:
            for start in range(0, total, 100):
                if start == total // 2:
                    await killed.wait()  # the second half comes after the kill
                batch = [Message(data=b"x" * 64, id=i) for i in sent[start : start + 100]]
                await publisher.publish(topic, batch)
                await asyncio.sleep(0.005)

        streaming = asyncio.create_task(stream())
        # When the consumer is killed with SIGKILL in the middle of the stream, handlers running
        await eventually(lambda: len(lines(first_out)) >= 2500, timeout=30, interval=0.01)
        assert await first.stop(signal.SIGKILL) == -signal.SIGKILL
        killed.set()
        killed_at = len(lines(first_out))
        # And a new consumer process of the same group takes over
        second = await spawn("consume", str(db), topic, "workers", str(second_out), *slow)
        await streaming
        # Then every published id is delivered at least once
        wanted = set(sent)
        await eventually(
            lambda: wanted <= set(lines(first_out)) | set(lines(second_out)),
            timeout=30,
            interval=0.1,
        )
        assert await second.stop() == 0
    delivered = Counter(lines(first_out) + lines(second_out))
    lost = wanted - set(delivered)
    duplicates = sum(n - 1 for n in delivered.values())
    print(f"\nkill -9 after {killed_at} deliveries: {total} published, {len(lost)} lost, "
          f"{duplicates} delivered twice")  # fmt: skip
    assert not lost
    assert set(delivered) == wanted


async def test_consumer_processes_of_a_group_never_share_a_message(
    tmp_path: Path, spawn: Spawn
) -> None:
    # Given two consumer processes of one group, with leases far longer than the test
    db, topic = tmp_path / "bus.db", "jobs"
    outs = [tmp_path / "a.txt", tmp_path / "b.txt"]
    lease = ("--lease", "60", "--delay", "0.002")
    peers = [await spawn("consume", str(db), topic, "workers", str(o), *lease) for o in outs]
    # When 4,000 messages are published
    sent = [f"j-{i}" for i in range(4000)]
    async with SqliteBroker(SqliteSettings(path=db)) as publisher:
        for start in range(0, 4000, 100):
            batch = [Message(data=b"j", id=i) for i in sent[start : start + 100]]
            await publisher.publish(topic, batch)
    await eventually(lambda: sum(len(lines(o)) for o in outs) >= 4000, timeout=30)
    await asyncio.sleep(0.3)
    for peer in peers:
        assert await peer.stop() == 0
    # Then each message went to exactly one of them, and both did some of the work
    first, second = lines(outs[0]), lines(outs[1])
    assert sorted(first + second) == sorted(sent), "a message was lost or delivered twice"
    assert first and second


async def test_publisher_and_consumer_processes_share_one_file(
    tmp_path: Path, spawn: Spawn
) -> None:
    db, topic = tmp_path / "bus.db", "events"
    async with SqliteBroker(SqliteSettings(path=db)) as consumer:
        collector = Collector()
        options = SubscriptionOptions(group="readers", concurrency=1)
        await consumer.subscribe(topic, collector, options)
        publisher = await spawn("publish", str(db), topic, "2000", ready=False)
        assert await asyncio.wait_for(publisher.process.wait(), 30) == 0
        await collector.wait_for(2000, timeout=20)
    assert collector.ids == [f"p-{i}" for i in range(2000)]


async def test_published_messages_survive_the_publisher_being_killed(
    tmp_path: Path, spawn: Spawn
) -> None:
    # Given a publisher process killed with SIGKILL right after its publishes returned
    db, topic = tmp_path / "bus.db", "durable"
    publisher = await spawn("publish", str(db), topic, "1000", "--hold")
    assert await publisher.stop(signal.SIGKILL) == -signal.SIGKILL
    # Then every message it published is in the file, in order
    async with SqliteBroker(SqliteSettings(path=db)) as reader:
        kept = await reader.browse(topic, 2000)
    assert [m.id for m in kept] == [f"p-{i}" for i in range(1000)]


async def test_a_commit_in_another_process_rings_the_consumers_doorbell(
    tmp_path: Path, spawn: Spawn
) -> None:
    # Given a consumer whose polling is so slow that only its doorbell can wake it in time
    db, topic = tmp_path / "bus.db", "bell"
    slow = SqliteSettings(
        path=db, min_poll_interval=60.0, max_poll_interval=60.0, redeliver_interval=60.0
    )
    async with SqliteBroker(slow) as consumer:
        collector = Collector()
        await consumer.subscribe(topic, collector, SubscriptionOptions(group="g"))
        # When another process publishes
        publisher = await spawn("publish", str(db), topic, "10", ready=False)
        assert await asyncio.wait_for(publisher.process.wait(), 30) == 0
        # Then the consumer gets the messages at once
        await collector.wait_for(10, timeout=5)


async def test_requests_and_replies_ring_doorbells_too(tmp_path: Path) -> None:
    # Given a server and a client (two connections) whose polling is far too slow to matter
    slow = SqliteSettings(
        path=tmp_path / "bus.db",
        min_poll_interval=60.0,
        max_poll_interval=60.0,
        redeliver_interval=60.0,
        trim_interval=60.0,
    )
    async with SqliteBroker(slow) as server, SqliteBroker(slow) as client:

        async def upper(message: Message) -> bytes:
            return message.data.upper()

        await server.serve("svc", upper, SubscriptionOptions(group="svc"))
        # Then the first request and its reply each wake the other side at once
        started = time.monotonic()
        for i in range(20):
            reply = await client.request("svc", Message(data=f"q{i}".encode()), timeout=5)
            assert reply.data == f"Q{i}".encode()
        assert time.monotonic() - started < 5


async def test_request_reply_to_a_server_process(tmp_path: Path, spawn: Spawn) -> None:
    db, topic = tmp_path / "bus.db", "svc.upper"
    server = await spawn("serve", str(db), topic)
    async with SqliteBroker(SqliteSettings(path=db)) as client:
        [entry] = await client.instances(topic)
        assert entry.instance != client.instance
        replies = await asyncio.gather(
            *(client.request(topic, Message(data=f"r{i}".encode()), 10) for i in range(20))
        )
        assert [r.data for r in replies] == [f"R{i}".encode() for i in range(20)]
        assert await server.stop() == 0
        assert await client.instances(topic) == [], "a stopped server is still listed"


# -- storage --------------------------------------------------------------------------------


async def test_trimming_keeps_the_file_bounded(tmp_path: Path) -> None:
    db, topic = tmp_path / "bus.db", "bulk"
    settings = SqliteSettings(path=db, trim_interval=0.1)
    sizes: list[int] = []
    async with SqliteBroker(settings) as broker:
        collector = Collector()
        await broker.subscribe(topic, collector, SubscriptionOptions(group="g", concurrency=50))
        for round_ in range(6):
            batch = [Message(data=os.urandom(1024)) for _ in range(1000)]
            for start in range(0, 1000, 100):
                await broker.publish(topic, batch[start : start + 100])
            await collector.wait_for(1000 * (round_ + 1), timeout=20)
            await eventually(lambda: _is(broker.retained(topic), 0), timeout=10)
            sizes.append(sum(p.stat().st_size for p in tmp_path.glob("bus.db*")))
    # Rounds after the first reuse the pages freed by trimming instead of growing the file
    assert max(sizes[2:]) <= sizes[1] * 1.25, sizes


async def _is(count: object, value: int) -> bool:
    return bool(await count == value)  # type: ignore[misc]


def test_claimed_but_unhandled_deliveries_keep_their_attempt(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "bus.db", busy_timeout=1.0)
    store.open()
    try:
        store.write([("t", [Message(data=b"a", id="a")])], [])
        store.ensure_group("t", "g")
        [delivery], _ = store.claim("t", "g", "c1", 10, 30.0)
        assert delivery.message.attempt == 1
        nothing, next_due = store.claim("t", "g", "c2", 10, 30.0)
        assert nothing == [] and next_due is not None and next_due > time.time() + 25
        # A consumer that shuts down hands back what its handlers never saw
        store.release("t", "g", "c1", None)
        [again], _ = store.claim("t", "g", "c2", 10, 30.0)
        assert (again.message.id, again.message.attempt) == ("a", 1)
        # A delivery whose handler ran counts as an attempt when it is handed back
        store.release("t", "g", "c2", [again.seq])
        [third], _ = store.claim("t", "g", "c3", 10, 30.0)
        assert third.message.attempt == 2
    finally:
        store.close(None)


# -- settings -------------------------------------------------------------------------------


async def test_unopenable_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    broker = SqliteBroker(SqliteSettings(path=tmp_path / "file" / "bus.db"))
    with pytest.raises(BrokerUnavailable, match="cannot open the sqlite bus"):
        await broker.connect()
    await broker.close()


async def test_concurrent_publishes_share_one_commit(tmp_path: Path) -> None:
    async with SqliteBroker(SqliteSettings(path=tmp_path / "bus.db")) as broker:
        before = broker.store.writes
        await asyncio.gather(*(broker.publish("t", [Message(data=b"x")]) for _ in range(50)))
        assert broker.store.writes - before <= 2, "concurrent publishes were not grouped"
        assert [m.data for m in await broker.browse("t", 100)] == [b"x"] * 50


def test_a_drained_backlog_gives_its_space_back(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "bus.db", busy_timeout=1.0)
    store.open()
    try:
        # Given a backlog of 12 MiB that one group consumed and acked
        store.ensure_group("t", "g")
        payload = os.urandom(1024)
        for _ in range(12):
            store.write([("t", [Message(data=payload) for _i in range(1000)])], [])
        size = store.db.execute("PRAGMA page_count").fetchone()[0]
        while deliveries := store.claim("t", "g", "c", 1000, 30.0)[0]:
            store.ack("t", "g", [d.seq for d in deliveries], "c")
        # When it is trimmed and the periodic sweep runs
        assert store.trim(["t"]) == 12_000
        store.sweep()
        steps = 0
        while store.vacuum_step():
            steps += 1
        # Then the file shrinks instead of keeping the backlog's pages, a chunk at a time
        assert steps > 1
        assert store.db.execute("PRAGMA page_count").fetchone()[0] < size / 4
    finally:
        store.close(None)


async def test_max_len_caps_a_topic_nobody_reads(tmp_path: Path) -> None:
    # Given a component that opted into maxLenApprox=100, and a group that is not consuming
    settings = SqliteSettings(path=tmp_path / "bus.db", trim_interval=0.05, max_len=100)
    async with SqliteBroker(settings) as broker:
        idle = await broker.subscribe("capped", Collector(), SubscriptionOptions(group="idle"))
        await idle.stop()
        sent = [Message(data=b"x") for _ in range(500)]
        for start in range(0, 500, 100):
            await broker.publish("capped", sent[start : start + 100])
        # Then only the newest 100 are kept, and the group resumes from the oldest kept one
        await eventually(lambda: _is(broker.retained("capped"), 100), timeout=10)
        collector = Collector()
        await broker.subscribe("capped", collector, SubscriptionOptions(group="idle"))
        await collector.wait_for(100)
        await asyncio.sleep(0.2)
    assert collector.ids == [m.id for m in sent[-100:]]


def test_a_late_ack_does_not_delete_the_lease_of_the_next_holder(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "bus.db", busy_timeout=1.0)
    store.open()
    try:
        store.ensure_group("t", "g")
        store.write([("t", [Message(data=b"x")])], [])
        # Given a delivery whose lease ran out on consumer a and that consumer b then took
        [first] = store.claim("t", "g", "a", 1, 0.01)[0]
        time.sleep(0.05)  # the lease itself is what is under test: let it run out
        [second] = store.claim("t", "g", "b", 1, 30.0)[0]
        assert (first.seq, second.message.attempt) == (second.seq, 2)
        # When a acks (or dead-letters) late
        store.ack("t", "g", [first.seq], "a")
        store.dead_letter("t", "g", first.seq, "t.deadletter", "a")
        # Then b still holds it, and nothing was dead-lettered
        assert store.db.execute("SELECT consumer FROM deliveries").fetchall() == [("b",)]
        assert store.retained("t.deadletter") == 0
        store.ack("t", "g", [second.seq], "b")
        assert store.db.execute("SELECT COUNT(*) FROM deliveries").fetchone() == (0,)
    finally:
        store.close(None)
