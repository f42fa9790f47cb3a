"""The in-process broker: a real Broker, used by unit tests and the ``pubsub.in-memory`` component.

Storage layout (all in a :class:`MemoryHub`, lost when the process ends):

- ``topics[topic].log``: the retained messages, oldest first, each with a sequence number;
  trimmed from the front once every group has moved past and acked them.
- ``topics[topic].groups[group]``: ``cursor`` (next sequence to deliver for the first time) and
  ``pending`` (sequence -> lease: the message, its delivery count and when it becomes visible
  again; leases of running handlers expire after processingTimeout, retries after their backoff).
- ``inboxes[address]``: the reply callback of each broker's request inbox.
- ``presence[(name, instance key)]``: presence entries with their last beat (the key of
  :func:`bus.presence_keys.storage_instance`, separate for apps and services).

Several :class:`MemoryBroker` objects sharing one hub behave like processes sharing a server.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from bus.broker import BaseBroker
from bus.delivery import Source
from bus.errors import BrokerClosed
from bus.message import STORED_MS, Message, stored_age
from bus.options import SubscriptionOptions
from bus.presence import HEARTBEAT_TTL, Presence
from bus.presence_keys import storage_instance
from bus.rpc import MODE_KEY, RequestMode

_CALL = RequestMode.CALL.value


@dataclass(slots=True)
class _Lease:
    message: Message
    deliveries: int
    visible_at: float
    holder: object | None


@dataclass(slots=True)
class _Group:
    cursor: int
    pending: dict[int, _Lease] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(slots=True)
class _Topic:
    log: deque[tuple[int, Message]] = field(default_factory=deque)
    next_seq: int = 1
    groups: dict[str, _Group] = field(default_factory=dict)

    def first_seq(self) -> int:
        return self.log[0][0] if self.log else self.next_seq


class MemoryHub:
    """The shared state of in-memory brokers: what a server would hold."""

    def __init__(self) -> None:
        self.topics: dict[str, _Topic] = {}
        self.inboxes: dict[str, Callable[[Message], None]] = {}
        self.presence: dict[tuple[str, str], Presence] = {}

    def topic(self, name: str) -> _Topic:
        topic = self.topics.get(name)
        if topic is None:
            topic = self.topics[name] = _Topic()
        return topic

    def append(self, name: str, batch: Sequence[Message]) -> None:
        topic = self.topic(name)
        for message in batch:
            stored = replace(message, topic=name, attempt=1)
            if message.metadata.get(MODE_KEY) == _CALL:  # so a server can tell its wait
                metadata = {**message.metadata, STORED_MS: str(int(time.time() * 1000))}
                stored = replace(stored, metadata=metadata)
            topic.log.append((topic.next_seq, stored))
            topic.next_seq += 1
        for group in topic.groups.values():
            group.changed.set()

    def trim(self, name: str) -> None:
        """Drop messages every group has moved past and acked."""
        topic = self.topics[name]
        if not topic.groups:
            return
        keep_from = min(
            min(group.pending, default=group.cursor) if group.pending else group.cursor
            for group in topic.groups.values()
        )
        while topic.log and topic.log[0][0] < keep_from:
            topic.log.popleft()


@dataclass(slots=True)
class _MemoryDelivery:
    message: Message
    seq: int


class _MemorySource:
    """One consumer of a group; several sources of the same group compete."""

    def __init__(self, hub: MemoryHub, topic: str, options: SubscriptionOptions) -> None:
        self._hub = hub
        self._topic_name = topic
        self._topic = hub.topic(topic)
        group = self._topic.groups.get(options.group)
        if group is None:
            group = self._topic.groups[options.group] = _Group(cursor=self._topic.first_seq())
        self._group = group
        self._lease = options.lease
        self._closed = False

    async def fetch(self, limit: int) -> Sequence[_MemoryDelivery]:
        while not self._closed:
            self._group.changed.clear()
            now = time.monotonic()
            batch = self._take(limit, now)
            if batch:
                return batch
            wake = min((lease.visible_at for lease in self._group.pending.values()), default=None)
            timeout = None if wake is None else max(wake - now, 0.001)
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation
                # that arrives as the event is set, and the subscription then never stops.
                async with asyncio.timeout(timeout):
                    await self._group.changed.wait()
            except TimeoutError:
                pass
        raise BrokerClosed("subscription closed")

    def _take(self, limit: int, now: float) -> list[_MemoryDelivery]:
        group, out = self._group, list[_MemoryDelivery]()
        for seq in sorted(s for s, lease in group.pending.items() if lease.visible_at <= now):
            if len(out) >= limit:
                return out
            lease = group.pending[seq]
            lease.deliveries += 1
            lease.visible_at, lease.holder = now + self._lease, self
            out.append(_MemoryDelivery(replace(lease.message, attempt=lease.deliveries), seq))
        for seq, message in self._topic.log:
            if len(out) >= limit:
                break
            if seq < group.cursor:
                continue
            group.pending[seq] = _Lease(message, 1, now + self._lease, self)
            group.cursor = seq + 1
            out.append(_MemoryDelivery(message, seq))
        return out

    async def ack(self, deliveries: Sequence[_MemoryDelivery]) -> None:
        for delivery in deliveries:
            self._group.pending.pop(delivery.seq, None)
        self._hub.trim(self._topic_name)

    async def retry(self, delivery: _MemoryDelivery, delay: float) -> None:
        lease = self._group.pending.get(delivery.seq)
        if lease is not None:
            lease.visible_at, lease.holder = time.monotonic() + delay, None
            self._group.changed.set()

    async def dead_letter(self, delivery: _MemoryDelivery, topic: str) -> None:
        self._hub.append(topic, [replace(delivery.message, attempt=1)])
        await self.ack([delivery])

    async def release(self, deliveries: Sequence[_MemoryDelivery]) -> None:
        now = time.monotonic()
        for delivery in deliveries:
            lease = self._group.pending.get(delivery.seq)
            if lease is not None and lease.holder is self:
                lease.visible_at, lease.holder = now, None
        self._group.changed.set()

    async def close(self) -> None:
        self._closed = True
        self._group.changed.set()


class MemoryBroker(BaseBroker):
    """An in-process broker; brokers sharing a :class:`MemoryHub` see each other's messages."""

    def __init__(
        self,
        hub: MemoryHub | None = None,
        *,
        instance: str | None = None,
        drain_timeout: float = 5.0,
    ) -> None:
        super().__init__(instance=instance, drain_timeout=drain_timeout)
        self.hub = hub if hub is not None else MemoryHub()
        self._inbox_address: str | None = None

    async def _connect(self) -> None:
        pass

    async def _disconnect(self) -> None:
        if self._inbox_address is not None:
            self.hub.inboxes.pop(self._inbox_address, None)

    async def _publish(self, topic: str, batch: Sequence[Message]) -> None:
        self.hub.append(topic, batch)

    async def _open_source(
        self, topic: str, options: SubscriptionOptions
    ) -> Source[_MemoryDelivery]:
        return _MemorySource(self.hub, topic, options)

    async def _open_inbox(self, deliver: Callable[[Message], None]) -> str:
        self._inbox_address = f"memory-inbox.{self.instance}.{uuid.uuid4().hex[:8]}"
        self.hub.inboxes[self._inbox_address] = deliver
        return self._inbox_address

    async def _send_reply(self, address: str, reply: Message) -> None:
        deliver = self.hub.inboxes.get(address)
        if deliver is not None:  # an inbox that is gone has nobody waiting: like a lost reply
            asyncio.get_running_loop().call_soon(deliver, reply)

    def _call_age(self, request: Message) -> float | None:
        """How long the call waited on the hub."""
        return stored_age(request)

    async def _browse(self, topic: str, limit: int) -> list[Message]:
        state = self.hub.topics.get(topic)
        if state is None:
            return []
        return [message for _, message in list(state.log)[:limit]]

    async def _beat(self, entries: Sequence[Presence]) -> None:
        now = time.time()
        for entry in entries:
            self.hub.presence[(entry.name, storage_instance(entry))] = replace(entry, last_beat=now)

    async def _remove_presence(self, entry: Presence) -> None:
        self.hub.presence.pop((entry.name, storage_instance(entry)), None)

    async def _list_presence(self, name: str | None) -> list[Presence]:
        now = time.time()
        return [
            p
            for p in self.hub.presence.values()
            if (name is None or p.name == name) and p.alive(now, HEARTBEAT_TTL)
        ]
