"""The embedded broker's async side: group commits, wake-ups, the inbox and maintenance.

The storage layout is described in the package docstring (:mod:`bus.sqlite`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from bus.backoff import Backoff
from bus.broker import BaseBroker
from bus.dbthread import DatabaseThread
from bus.delivery import Source
from bus.errors import BrokerClosed, BrokerError, BrokerUnavailable, PublishError
from bus.message import Message, stored_age
from bus.options import SubscriptionOptions
from bus.presence import HEARTBEAT_TTL, Presence
from bus.presence_keys import storage_instance
from bus.sqlite._doorbell import HELLO, Doorbell
from bus.sqlite._presence_rows import DOORBELL_TTL
from bus.sqlite._schema import SqliteDelivery, encode_metadata, is_busy
from bus.sqlite._source import SqliteSource
from bus.sqlite._store import SWEEP_INTERVAL, SqliteStore
from bus.sqlite.settings import SqliteSettings

log = logging.getLogger("omnibus.bus.sqlite")

T = TypeVar("T")

TRIM_CHUNK = 100  # acked messages deleted per transaction and topic (about half a millisecond)


# Between the attempts of a call that found the file's write lock taken.
_BUSY = Backoff(initial=0.001, maximum=0.05, jitter=0.001)


class SqliteBroker(BaseBroker):
    """The embedded broker; every broker on the same file sees the others' messages."""

    def __init__(
        self,
        settings: SqliteSettings,
        *,
        instance: str | None = None,
        drain_timeout: float = 5.0,
    ) -> None:
        super().__init__(instance=instance, drain_timeout=drain_timeout)
        self.settings = settings
        self.store = SqliteStore(settings.path, settings.busy_timeout)
        self._thread: DatabaseThread | None = None
        self._pending_messages: list[tuple[str, Sequence[Message], asyncio.Future[None]]] = []
        self._pending_replies: list[tuple[tuple[Any, ...], asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._listeners: dict[str, set[asyncio.Event]] = {}
        self._listening = asyncio.Event()
        self._dirty: set[str] = set()
        self._inbox_address: str | None = None
        self._inbox_wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._bell_name = f"{self.instance}.{uuid.uuid4().hex[:8]}"
        self._doorbell = Doorbell(self._rung)
        self._rings = 0  # datagrams received, so that polling knows the doorbell works
        self._bell_lock = asyncio.Lock()

    async def call(self, fn: Callable[..., T], *args: Any, patient: bool = False) -> T:
        """Run ``fn(*args)`` on the database thread; sqlite3 errors become BrokerError.

        One attempt waits at most ``LOCK_SLICE`` for another process's write lock, so the
        thread moves on to the calls queued behind it; a busy call is tried again here, until
        ``busyTimeout`` has passed, or (``patient``, for publishes) until it gets the lock.
        """
        waited = 0
        deadline = time.monotonic() + self.settings.busy_timeout
        while True:
            if self._thread is None:
                raise BrokerClosed("the sqlite broker is not connected")
            try:
                return await self._thread.submit(fn, *args)
            except sqlite3.Error as exc:
                if not is_busy(exc) or (not patient and time.monotonic() >= deadline):
                    raise BrokerError(f"sqlite bus {self.settings.path}: {exc}") from exc
            waited += 1
            await asyncio.sleep(_BUSY.delay(waited))

    # -- wake-ups ---------------------------------------------------------------------------

    def listen(self, topic: str, wake: asyncio.Event) -> None:
        """Set ``wake`` when ``topic`` may have something new (and on any outside commit)."""
        self._listeners.setdefault(topic, set()).add(wake)
        self._listening.set()

    def forget(self, topic: str, wake: asyncio.Event) -> None:
        """Stop setting ``wake``."""
        waiting = self._listeners.get(topic)
        if waiting is not None:
            waiting.discard(wake)
            if not waiting:
                del self._listeners[topic]

    def wake_topic(self, topic: str) -> None:
        """Wake this process's consumers of ``topic`` after a local commit."""
        for wake in self._listeners.get(topic, ()):
            wake.set()

    def changed(self, topic: str) -> None:
        """After a commit that may give consumers work: wake ours, ring the other brokers."""
        self.wake_topic(topic)
        self._doorbell.ring_others([topic])

    def _rung(self, payload: bytes) -> None:
        self._rings += 1
        if not payload:
            self._wake_all()
            return
        for name in payload.decode(errors="replace").split("\n"):
            if name == HELLO:
                self._reread_bells()
            elif name == self._inbox_address:
                self._inbox_wake.set()
            else:
                self.wake_topic(name)

    def _reread_bells(self) -> None:
        # Queued on the database thread now, so it is done before any claim a later ring causes.
        if self._thread is None:
            return
        reading = self._thread.submit(self.store.doorbells, self._bell_name)

        def done(future: asyncio.Future[list[int]]) -> None:
            if not future.cancelled() and future.exception() is None:
                self._doorbell.peers = future.result()

        reading.add_done_callback(done)

    async def _hang_bell(self) -> None:
        """Open this broker's doorbell (once) and register it for the other brokers."""
        async with self._bell_lock:  # subscriptions may be opened concurrently
            if self._doorbell.hung:
                return
            try:
                port = await self._doorbell.hang()
            except OSError:
                log.warning("no loopback doorbell; other processes are noticed by polling only")
                return
            await self.call(self.store.hang_doorbell, self._bell_name, port)
            self._doorbell.peers = await self.call(self.store.doorbells, self._bell_name)
            self._doorbell.ring_others([HELLO])

    def touched(self, topic: str) -> None:
        """Note that ``topic`` had acks, so the next trim looks at it."""
        self._dirty.add(topic)

    def _wake_all(self) -> None:
        for waiting in self._listeners.values():
            for wake in waiting:
                wake.set()
        self._inbox_wake.set()

    async def _poll(self) -> None:
        """Notice commits of other processes through ``PRAGMA data_version``."""
        settings = self.settings
        interval = settings.min_poll_interval
        version = -1
        rings = self._rings
        while True:
            if not self._listeners and self._inbox_address is None:
                self._listening.clear()
                await self._listening.wait()
            await asyncio.sleep(interval)
            try:
                current = await self.call(self.store.data_version)
            except BrokerError:
                log.warning("polling the sqlite bus failed; retrying", exc_info=True)
                interval = settings.max_poll_interval
                continue
            rang, rings = self._rings != rings, self._rings
            if current != version:
                version = current
                self._wake_all()
                # After a ring the doorbell is known to work and has woken the consumers of the
                # commits it announced: polling is then the fallback for lost datagrams and
                # keeps slowing down, rather than waking everyone after every commit.
                if not rang:
                    interval = settings.min_poll_interval
                    continue
            interval = min(interval * 2, settings.max_poll_interval)

    async def _trim(self, topics: set[str]) -> None:
        """Trim ``topics`` a chunk at a time, letting other writers in between.

        One large delete would hold the file's write lock for milliseconds (a second of
        acked messages at 1,000 msg/s: 4 to 7 ms), stalling every publish and claim meanwhile.
        """
        store, max_len = self.store, self.settings.max_len
        while await self.call(store.trim, topics, max_len, TRIM_CHUNK) >= TRIM_CHUNK:
            pass

    async def _maintain(self) -> None:
        """Trim topics that had acks, refresh the doorbells, now and then sweep stale rows."""
        next_sweep = next_beat = time.monotonic()
        while True:
            await asyncio.sleep(self.settings.trim_interval)
            now = time.monotonic()
            try:
                if self._dirty:
                    topics, self._dirty = self._dirty, set()
                    await self._trim(topics)
                if self._doorbell.port is not None and now >= next_beat:
                    next_beat = now + DOORBELL_TTL / 3
                    await self.call(self.store.hang_doorbell, self._bell_name, self._doorbell.port)
                self._doorbell.peers = await self.call(self.store.doorbells, self._bell_name)
                if now >= next_sweep:
                    next_sweep = now + SWEEP_INTERVAL
                    await self.call(self.store.sweep)
                    while await self.call(self.store.vacuum_step):  # a chunk per transaction
                        pass
            except BrokerError:
                log.warning("maintaining the sqlite bus failed; retrying", exc_info=True)

    # -- hooks ------------------------------------------------------------------------------

    async def _connect(self) -> None:
        self._thread = DatabaseThread("omnibus-sqlite")
        try:
            await self.call(self.store.open)
        except (BrokerError, OSError) as exc:
            self._thread.stop()
            self._thread = None
            raise BrokerUnavailable(
                f"cannot open the sqlite bus at {self.settings.path}: {exc}"
            ) from exc
        self._doorbell.open_sender()
        self._doorbell.peers = await self.call(self.store.doorbells, self._bell_name)
        self._tasks = [
            asyncio.create_task(self._poll(), name="sqlite-poll"),
            asyncio.create_task(self._maintain(), name="sqlite-maintain"),
        ]

    async def _disconnect(self) -> None:
        if self._dirty:  # acks since the last trim: no trim loop will look at them any more
            topics, self._dirty = self._dirty, set()
            with contextlib.suppress(BrokerError):
                await self.call(self.store.trim, topics)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._writer is not None:
            with contextlib.suppress(Exception):
                await self._writer
        hung = self._doorbell.hung
        self._doorbell.close()
        if hung:
            with contextlib.suppress(BrokerError):
                await self.call(self.store.hang_doorbell, self._bell_name, None)
        with contextlib.suppress(BrokerError):
            await self.call(self.store.close, self._inbox_address)
        if self._thread is not None:
            self._thread.stop()
            self._thread = None

    async def _publish(self, topic: str, batch: Sequence[Message]) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending_messages.append((topic, batch, future))
        self._start_writer()
        await future

    async def _send_reply(self, address: str, reply: Message) -> None:
        if address == self._inbox_address and self._inbox is not None:
            asyncio.get_running_loop().call_soon(self._inbox.deliver, reply)
            return
        row = (
            address,
            reply.correlation_id,
            reply.id,
            reply.data,
            encode_metadata(reply.metadata),
        )
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending_replies.append((row, future))
        self._start_writer()
        await future

    def _start_writer(self) -> None:
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_pending(), name="sqlite-writer")

    async def _write_pending(self) -> None:
        """Group commit: everything queued while the previous transaction ran goes in one."""
        await asyncio.sleep(0)  # let the publishes of this loop tick queue up
        while self._pending_messages or self._pending_replies:
            messages, self._pending_messages = self._pending_messages, []
            replies, self._pending_replies = self._pending_replies, []
            futures = [f for *_, f in messages] + [f for _, f in replies]
            try:
                await self.call(  # lock contention alone never fails a publish
                    self.store.write,
                    [(t, b) for t, b, _ in messages],
                    [r for r, _ in replies],
                    patient=True,
                )
            except Exception as exc:
                error = PublishError(f"publish to the sqlite bus failed: {exc}")
                error.__cause__ = exc
                for future in futures:
                    if not future.done():
                        future.set_exception(error)
                continue
            for future in futures:
                if not future.done():
                    future.set_result(None)
            topics = {t for t, _, _ in messages}
            self._doorbell.ring_others([*topics, *{row[0] for row, _ in replies}])
            for topic in topics:
                self.wake_topic(topic)
                if self.settings.max_len is not None:
                    self._dirty.add(topic)

    async def _open_source(
        self, topic: str, options: SubscriptionOptions
    ) -> Source[SqliteDelivery]:
        await self.call(self.store.ensure_group, topic, options.group)
        await self._hang_bell()
        source = SqliteSource(self, topic, options)
        self.listen(topic, source.wake)
        return source

    async def _open_inbox(self, deliver: Callable[[Message], None]) -> str:
        address = f"sqlite-inbox.{self.instance}.{uuid.uuid4().hex[:8]}"
        await self._hang_bell()
        self._inbox_address = address
        self._listening.set()
        self._tasks.append(asyncio.create_task(self._read_inbox(address, deliver), name="inbox"))
        return address

    async def _read_inbox(self, address: str, deliver: Callable[[Message], None]) -> None:
        while True:
            self._inbox_wake.clear()
            try:
                replies = await self.call(self.store.take_replies, address)
            except BrokerError:
                log.warning("reading the sqlite inbox failed; retrying", exc_info=True)
                replies = []
            for reply in replies:
                deliver(reply)
            if not replies:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.settings.redeliver_interval):
                        await self._inbox_wake.wait()

    def _call_age(self, request: Message) -> float | None:
        """How long the call waited since its insert (every process shares this clock)."""
        return stored_age(request)

    async def _browse(self, topic: str, limit: int) -> list[Message]:
        return await self.call(self.store.browse, topic, limit)

    async def retained(self, topic: str) -> int:
        """How many messages the file still holds for ``topic``."""
        await self._ready()
        return await self.call(self.store.retained, topic)

    async def _beat(self, entries: Sequence[Presence]) -> None:
        await self.call(self.store.beat, entries)

    async def _remove_presence(self, entry: Presence) -> None:
        await self.call(self.store.remove_presence, entry.name, storage_instance(entry))

    async def _list_presence(self, name: str | None) -> list[Presence]:
        return await self.call(self.store.list_presence, name, time.time() - HEARTBEAT_TTL)
