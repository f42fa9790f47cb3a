"""The change feed: every committed change of a store published as a CloudEvent (beyond Dapr).

Turned on by the store component's metadata, either pair of names:

    changeFeedPubsub / changeFeedTopic          omnibus's names
    outboxPublishPubsub / outboxPublishTopic    Dapr's outbox names (same behaviour here)

The pubsub must be a component of the sidecar that serves the store.  Each change is one event
on that topic, ``type`` :data:`CHANGE_EVENT_TYPE`, ``source`` the serving app, ``subject`` the key,
``time`` the time of the write, ``data`` = ``{"store", "key", "appId", "operation":
"upsert"|"delete"|"expire", "etag", "value"}`` (``value`` only on upserts: the JSON value, or
``valueBase64`` for bytes that are not JSON; ``key`` is the app's key, ``appId`` the app that made
the change).  The event ``id`` belongs to the change: a re-published change carries the same id,
so a subscriber de-duplicates on it.

Expiry, where the store itself removes the row: operation ``"expire"``, ``etag`` the etag the
expired value had, no ``value``.  ``state.sqlite`` and ``state.postgresql`` record it in the
transaction of their ``cleanupInterval`` purge (only rows past their expiry at that moment, so a
key saved again without TTL before the purge has none); ``state.in-memory`` in its sweep.  The
store knows only the stored key: ``appId`` and ``key`` are its parts around ``||`` (``appId`` is
"" for a key without prefix).  ``state.redis`` reports no expiry: Redis drops the key itself.

Guarantee: at least once, whatever the client does (a transactional outbox).  A change and its
record commit together (:mod:`state.store`): in one SQL transaction on ``state.sqlite`` and
``state.postgresql``, in one Lua script or MULTI/EXEC on ``state.redis``, in one step of the event
loop on ``state.in-memory`` (which keeps nothing across a restart, records included).  A
:class:`ChangeRelay` publishes the records oldest first and deletes each batch once the pubsub
holds it durably.  It runs after every write, at start-up and every ``poll`` seconds, so what a
SIGKILLed sidecar left unpublished goes out from the next relay (the restarted sidecar or a
replica) once the dead relay's lease has lapsed.  A failed publish leaves the records where they
are: the relay tries again with backoff, logging each failure.  A change may be published twice
(a relay dies between a publish and its delete, or a slow relay's lease is taken over).

The caller's answer: a write is answered once it is committed and the relay pass that follows it
has ended (``wait`` seconds at most).  So when this sidecar's relay holds the lease and the pubsub
works, a change answered 2xx has its event on the topic already, as before the outbox.  A failed
publish no longer fails the write (the record guarantees the event): the caller gets its 2xx and
the event follows once the pubsub is back; while the relay backs off, writes do not wait for it.
A sidecar whose relay does not hold the lease (a replica) answers at commit; the holder
publishes within ``poll``.

Replicas: one relay per store publishes at a time, the holder of the store's *relay lease* (a row
of the store's database, a Redis key with an expiry), renewed by every pass and lapsing ``lease``
seconds after its holder stopped; a relay that stops cleanly releases it at once.  So a store's
records are published in commit order by one relay, and replicas do not each publish every
record.  (Per-record claims such as SKIP LOCKED would let replicas publish side by side, but out
of order.)  On PostgreSQL, concurrent transactions of different keys may commit in another order
than they numbered their records; the changes of one key always follow their commit order.
Defaults (:class:`RelayTiming`): a pass every second at least, a 10 s lease, a 5 s wait; the
metadata ``changeFeedPollInterval`` and ``changeFeedLease`` (durations, ``500ms``, ``30s`` or bare
milliseconds, positive, the lease longer than the poll) set the first two.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from bus.backoff import Backoff
from bus.errors import ConfigError, InvalidArgument
from bus.message import Message
from bus.options import parse_duration
from state.store import Journal, RecordedChange, StateStore

log = logging.getLogger("omnibus.state.feed")

CHANGE_EVENT_TYPE = "com.omnibus.state.changed"
_NAMES = (("changeFeedPubsub", "changeFeedTopic"), ("outboxPublishPubsub", "outboxPublishTopic"))
_POLL, _LEASE = "changeFeedPollInterval", "changeFeedLease"


class Publisher(Protocol):
    """Where events go: a pubsub component's broker."""

    async def publish(self, topic: str, batch: Sequence[Message]) -> None: ...


@dataclass(frozen=True, slots=True)
class FeedSettings:
    """The pubsub and topic that receive a store's changes."""

    pubsub: str
    topic: str
    poll: float = 1.0
    lease: float = 10.0

    @classmethod
    def from_metadata(cls, store: str, metadata: Mapping[str, str]) -> FeedSettings | None:
        """The feed a component's metadata asks for, None without; ConfigError if half set."""
        lowered = {name.lower(): value.strip() for name, value in metadata.items()}
        for pubsub_name, topic_name in _NAMES:
            pubsub = lowered.get(pubsub_name.lower(), "")
            topic = lowered.get(topic_name.lower(), "")
            if pubsub and topic:
                poll = _duration(store, lowered, _POLL, 1.0)
                lease = _duration(store, lowered, _LEASE, 10.0)
                if lease <= poll:
                    raise ConfigError(
                        f"component {store!r}: metadata {_LEASE!r}: expected a duration longer "
                        f"than {_POLL!r} ({poll:g}s), got {lease:g}s"
                    )
                return cls(pubsub, topic, poll, lease)
            if pubsub or topic:
                missing = topic_name if pubsub else pubsub_name
                raise ConfigError(
                    f"component {store!r}: metadata {missing!r}: expected a value "
                    f"(set both {pubsub_name!r} and {topic_name!r}, or neither)"
                )
        return None


def _duration(store: str, lowered: Mapping[str, str], name: str, default: float) -> float:
    """A positive duration of the feed's metadata, in seconds; ``default`` when not set."""
    text = lowered.get(name.lower(), "")
    if not text:
        return default
    try:
        seconds = parse_duration(text, what=name)
    except InvalidArgument:
        seconds = 0.0
    if seconds <= 0:
        raise ConfigError(
            f"component {store!r}: metadata {name!r}: expected a positive duration like '500ms', "
            f"'30s' or milliseconds, got {text!r}"
        )
    return seconds


def expiry_journal(stored_key: str) -> Journal:
    """The journal of a stored key's expiry: its app and key are the parts around ``||``."""
    app_id, separator, key = stored_key.partition("||")
    return Journal(app_id, key) if separator else Journal("", stored_key)


@dataclass(frozen=True, slots=True)
class RelayTiming:
    """How a relay paces itself; durations in seconds.

    ``poll``: a pass at least this often (leftovers of other relays, lease renewal); ``lease``:
    how long a pass keeps the relay lease; ``batch``: records per publish; ``backoff``: the waits
    after failed passes; ``wait``: how long a write's answer waits for the pass after it;
    ``grace``: how long closing waits for a last pass.
    """

    poll: float = 1.0
    lease: float = 10.0
    batch: int = 256
    backoff: Backoff = field(default_factory=lambda: Backoff(initial=0.1, maximum=5.0))
    wait: float = 5.0
    grace: float = 5.0


def _always() -> bool:
    return True


class ChangeFeed:
    """The events of one store's changes: where they go and what they say.

    ``ready`` tells whether the publisher may be used yet (a sidecar connects its pubsubs after
    its stores); until it is, the relay leaves the records in the store.
    """

    def __init__(
        self,
        store: str,
        settings: FeedSettings,
        publisher: Publisher,
        *,
        source: str,
        timing: RelayTiming | None = None,
        ready: Callable[[], bool] = _always,
    ) -> None:
        self.store = store
        self.settings = settings
        self.source = source
        self.timing = timing or RelayTiming(poll=settings.poll, lease=settings.lease)
        self.ready = ready
        self._publisher = publisher

    async def publish(self, changes: Sequence[RecordedChange]) -> None:
        """Publish ``changes`` as one batch; returns once the pubsub holds them durably."""
        if changes:
            await self._publisher.publish(self.settings.topic, [self._message(c) for c in changes])

    def _message(self, change: RecordedChange) -> Message:
        event = {
            "id": change.event_id,
            "specversion": "1.0",
            "source": self.source,
            "type": CHANGE_EVENT_TYPE,
            "datacontenttype": "application/json",
            "topic": self.settings.topic,
            "pubsubname": self.settings.pubsub,
            "subject": change.key,
            "time": change.time.isoformat().replace("+00:00", "Z"),
            "data": self._data(change),
        }
        return Message(data=orjson.dumps(event), id=change.event_id)

    def _data(self, change: RecordedChange) -> dict[str, Any]:
        data: dict[str, Any] = {
            "store": self.store,
            "key": change.key,
            "appId": change.app_id,
            "operation": change.operation,
            "etag": change.etag,
        }
        if change.value is not None:
            try:
                data["value"] = orjson.loads(change.value)
            except orjson.JSONDecodeError:
                data["valueBase64"] = base64.b64encode(change.value).decode()
        return data


class ChangeRelay:
    """Publishes the changes a store recorded, oldest first, and deletes them once published.

    One task: a pass, then a pause until a write wakes it, ``poll`` elapses, or (after a failed
    pass) the backoff has passed.  A pass claims a batch (holding the relay lease), publishes it,
    forgets it, and goes on while batches come full.
    """

    def __init__(self, store: StateStore, feed: ChangeFeed) -> None:
        self.store = store
        self.feed = feed
        self.holder = f"{feed.source}/{uuid.uuid4().hex[:12]}"
        self._timing = feed.timing
        self._woken = asyncio.Event()
        self._waiters: list[asyncio.Future[None]] = []
        self._failures = 0
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        """Start relaying (a first pass at once: what an earlier relay left goes out)."""
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._run(), name=f"change-relay-{self.store.name}")

    def wake(self) -> asyncio.Future[None] | None:
        """Ask for a pass, after a write committed its record.

        The future is done when a pass that began after this call has ended (published, failed,
        or found another relay holding the lease); ``None`` when no pass is worth waiting for:
        the relay is stopped, its publisher not ready yet, or it is backing off after a failure.
        """
        if self._task is None or self._stopping or self._failures or not self.feed.ready():
            return None
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._woken.set()
        return waiter

    async def flush(self) -> None:
        """Wake the relay after a committed write and wait for that pass (``wait`` s at most)."""
        waiter = self.wake()
        if waiter is not None:
            with contextlib.suppress(TimeoutError):  # the record stands: its event will follow
                # shielded: a caller that gives up leaves the pass running
                await asyncio.wait_for(asyncio.shield(waiter), self._timing.wait)

    async def stop(self) -> None:
        """A last pass (within ``grace``), then stop and release the lease."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        self._woken.set()
        done, _ = await asyncio.wait({task}, timeout=self._timing.grace)
        if not done:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._settle(self._waiters)
        self._waiters = []
        try:
            await self.store.release_changes(self.holder)
        except Exception as exc:  # the lease lapses on its own
            log.warning("change feed of %s: releasing the relay lease failed: %s", self.name, exc)

    @property
    def name(self) -> str:
        """The store's name."""
        return self.store.name

    async def _run(self) -> None:
        while True:
            pause = await self._pass()
            if self._stopping and not self._woken.is_set():
                return  # a stop during a pass gets one more pass, for what that one missed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._woken.wait(), pause)

    async def _pass(self) -> float:
        """One pass; the pause before the next: ``poll``, or the backoff after a failure."""
        self._woken.clear()
        waiters, self._waiters = self._waiters, []
        try:
            relayed = await self._drain() if self.feed.ready() else 0
        except Exception as exc:
            self._failures += 1
            pause = self._timing.backoff.delay(self._failures)
            log.warning(
                "change feed of %s: relaying to %s/%s failed (try %d: %s); the changes stay "
                "recorded, next try in %.2fs",
                self.name,
                self.feed.settings.pubsub,
                self.feed.settings.topic,
                self._failures,
                exc,
                pause,
            )
            return pause
        else:
            if self._failures and relayed:
                log.info("change feed of %s: relaying again", self.name)
            self._failures = 0
            return self._timing.poll
        finally:
            self._settle(waiters)

    async def _drain(self) -> int:
        """Publish and forget batches while they come full; how many changes went out."""
        limit, relayed = self._timing.batch, 0
        while True:
            batch = await self.store.claim_changes(
                self.holder, lease=self._timing.lease, limit=limit
            )
            if not batch:  # nothing recorded, or another relay holds the lease
                return relayed
            await self.feed.publish(batch)
            await self.store.forget_changes(batch)
            relayed += len(batch)
            if len(batch) < limit:
                return relayed

    @staticmethod
    def _settle(waiters: list[asyncio.Future[None]]) -> None:
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
