"""From a publish request to bus messages, and the coalescing of concurrent publishes.

:func:`make_message` turns one publish (body, content type, ``metadata.*``) into a bus
:class:`~bus.message.Message` whose id is the CloudEvent id; :func:`parse_bulk` does the same for
each entry of a bulk publish.  :class:`Publisher` hands concurrent publishes to one topic to the
broker as one ``publish`` call: while a call is in flight, new requests queue up and go together
in the next one, so a burst of HTTP requests costs a few broker round trips, not one each.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType

import orjson

from bus.broker import BaseBroker
from bus.errors import InvalidArgument
from bus.message import Message, new_id
from runtime.api.body import fields
from runtime.api.dapr_errors import RequestMetadataError
from runtime.pubsub.cloudevents import (
    EventAttributes,
    from_cloudevent,
    is_cloudevent_type,
    is_json_type,
    new_envelope,
)

_TRUE = frozenset({"1", "t", "true"})
_FALSE = frozenset({"", "0", "f", "false"})


def parse_bool(value: str | None, what: str) -> bool:
    """Go's ``strconv.ParseBool``, which Dapr uses for boolean metadata."""
    text = (value or "").strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise RequestMetadataError(f"{what}: {value!r} is not a boolean")


@dataclass(frozen=True, slots=True)
class PublishContext:
    """Where a publish goes and what the request said besides its body."""

    pubsubname: str
    topic: str
    source: str  # the publishing app id
    traceparent: str | None = None
    tracestate: str | None = None


def make_message(
    body: bytes,
    content_type: str | None,
    metadata: Mapping[str, str],
    ctx: PublishContext,
    *,
    now: datetime | None = None,
    json_checked: bool = False,
) -> Message:
    """One publish as a bus message: a CloudEvent envelope, or the raw body for rawPayload.

    ``metadata`` must map str to str (query parameters, checked bulk entries): it is not checked
    again. A bulk publish passes one ``now`` for all its entries, and ``json_checked`` for the
    JSON it serialized itself.
    """
    attrs = EventAttributes.from_metadata(metadata, ctx.traceparent, ctx.tracestate)
    if parse_bool(metadata.get("rawPayload"), "rawPayload"):
        headers = dict(metadata)
        if attrs.traceparent:
            headers.setdefault("traceparent", attrs.traceparent)
        if attrs.tracestate:
            headers.setdefault("tracestate", attrs.tracestate)
        return Message(data=body, metadata=headers, id=attrs.id or new_id())
    if is_cloudevent_type(content_type):
        event_id, envelope = from_cloudevent(
            body, topic=ctx.topic, pubsubname=ctx.pubsubname, source=ctx.source, attrs=attrs
        )
    else:
        event_id, envelope = new_envelope(
            body,
            content_type,
            topic=ctx.topic,
            pubsubname=ctx.pubsubname,
            source=ctx.source,
            attrs=attrs,
            now=now,
            json_checked=json_checked,
        )
    return Message(data=envelope, metadata=MappingProxyType(dict(metadata)), id=event_id)


@dataclass(frozen=True, slots=True)
class BulkEntry:
    """One entry of a bulk publish, parsed and checked."""

    entry_id: str
    data: bytes
    content_type: str
    metadata: Mapping[str, str]


_ENTRY_FIELDS = ("entryId", "event", "contentType", "metadata")


def _entry(item: object, index: int) -> BulkEntry:
    if not isinstance(item, dict):
        raise InvalidArgument(f"entry {index} is not a JSON object")
    # Go's field matching, as Dapr decodes the entry: the JS SDK sends "entryID".
    found = fields(item, _ENTRY_FIELDS)
    entry_id = found.get("entryId")
    if not isinstance(entry_id, str) or not entry_id:
        raise InvalidArgument(f"entry {index}: entryId is missing or not a non-empty string")
    event = found.get("event")
    content_type = found.get("contentType") or (
        "text/plain" if isinstance(event, str) else "application/json"
    )
    if not isinstance(content_type, str):
        raise InvalidArgument(f"entry {entry_id!r}: contentType must be a string")
    metadata = found.get("metadata") or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise InvalidArgument(f"entry {entry_id!r}: metadata must map strings to strings")
    if is_json_type(content_type) or is_cloudevent_type(content_type):
        data = orjson.dumps(event)
    elif isinstance(event, str):
        data = event.encode("utf-8")
    else:
        raise InvalidArgument(f"entry {entry_id!r}: a {content_type} event must be a string")
    return BulkEntry(entry_id, data, content_type, metadata)


def parse_bulk(payload: object) -> list[BulkEntry]:
    """The entries of a bulk publish body; unique, non-empty entry ids."""
    if not isinstance(payload, list):
        raise InvalidArgument("the body of a bulk publish must be a JSON array of entries")
    entries = [_entry(item, i) for i, item in enumerate(payload)]
    seen: set[str] = set()
    for entry in entries:
        if entry.entry_id in seen:
            raise InvalidArgument(f"entryId {entry.entry_id!r} is used more than once")
        seen.add(entry.entry_id)
    return entries


# Metadata a backend applies to a whole broker call rather than per message (RabbitMQ publishes
# a batch with one routing key), or may refuse a whole call for (RabbitMQ refuses a
# ttlInSeconds of 0): only messages that agree on them share a broker call.
_BATCH_KEYS = ("routingKey", "ttlInSeconds")

_Lane = tuple[str, tuple[str, ...]]  # topic, values of the batch keys
_Part = tuple[Sequence[Message], asyncio.Future[None]]  # one caller's messages


def _lane_of(topic: str, message: Message) -> _Lane:
    metadata = message.metadata
    return topic, tuple(metadata.get(key, "") for key in _BATCH_KEYS)


class Publisher:
    """Publishes to one broker, coalescing concurrent publishes to the same topic.

    Up to ``max_in_flight`` broker calls per topic overlap: while one batch waits for the
    broker's answer (a pipeline round trip, a publisher confirm, a commit), the requests that
    arrived meanwhile already go out in the next, instead of queueing behind it.  Each batch keeps
    the order of its messages; requests that were in flight at the same time have no order
    between them, over HTTP or anywhere else.

    Each caller's publish succeeds or fails on its own merits, whatever it was batched with:
    messages that disagree on a batch-wide setting (``routingKey``, ``ttlInSeconds``) never
    share a broker call, and when the broker refuses a shared call as invalid anyway, each
    caller's messages are sent again on their own, so only the bad one fails.
    """

    def __init__(self, broker: BaseBroker, max_batch: int = 500, max_in_flight: int = 4) -> None:
        self._broker = broker
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._queues: dict[_Lane, collections.deque[_Part]] = {}
        self._flushers: dict[_Lane, set[asyncio.Task[None]]] = {}
        self._idle: dict[_Lane, int] = {}  # flushers per lane that are not waiting on the broker

    async def publish(self, topic: str, messages: Sequence[Message]) -> None:
        """Returns once the broker holds ``messages`` durably; raises the broker's error."""
        if not messages:
            return
        lane = _lane_of(topic, messages[0])
        if all(_lane_of(topic, m) == lane for m in messages[1:]):
            await self._enqueue(lane, messages)
            return
        lanes: dict[_Lane, list[Message]] = {}  # a bulk publish that mixes routing keys
        for message in messages:
            lanes.setdefault(_lane_of(topic, message), []).append(message)
        for lane, group in lanes.items():
            await self._enqueue(lane, group)

    async def _enqueue(self, lane: _Lane, messages: Sequence[Message]) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queues.setdefault(lane, collections.deque()).append((messages, future))
        flushers = self._flushers.setdefault(lane, set())
        if not self._idle.get(lane) and len(flushers) < self._max_in_flight:
            # every flusher of the lane is waiting on the broker: one more takes this batch
            self._idle[lane] = self._idle.get(lane, 0) + 1
            task = asyncio.create_task(self._flush(lane), name=f"pub:{lane[0]}")
            flushers.add(task)
        await future

    async def _flush(self, lane: _Lane) -> None:
        queue = self._queues[lane]
        try:
            while queue:
                parts: list[_Part] = []
                size = 0
                while queue and (not parts or size + len(queue[0][0]) <= self._max_batch):
                    part = queue.popleft()
                    if not part[1].done():  # a caller that went away publishes nothing
                        parts.append(part)
                        size += len(part[0])
                self._idle[lane] -= 1
                try:
                    await self._send(lane[0], parts)
                finally:
                    self._idle[lane] += 1
        finally:
            self._idle[lane] -= 1
            flushers = self._flushers[lane]
            flushers.discard(asyncio.current_task())
            if not flushers:
                del self._flushers[lane], self._idle[lane]
                if not queue:
                    del self._queues[lane]

    async def _send(self, topic: str, parts: list[_Part]) -> None:
        if not parts:
            return
        batch = [message for messages, _ in parts for message in messages]
        try:
            await self._broker.publish(topic, batch)
        except InvalidArgument as exc:
            if len(parts) == 1:
                _settle(parts, exc)
            else:  # someone's message is bad: find out whose, each caller on their own
                await asyncio.gather(*(self._send(topic, [part]) for part in parts))
        except Exception as exc:
            _settle(parts, exc)
        else:
            _settle(parts, None)

    async def drain(self) -> None:
        """Wait for publishes in flight (at shutdown, after HTTP intake stopped)."""
        while self._flushers:
            tasks = [task for flushers in self._flushers.values() for task in flushers]
            await asyncio.gather(*tasks, return_exceptions=True)


def _settle(parts: Sequence[_Part], exc: BaseException | None) -> None:
    for _, future in parts:
        if future.done():
            continue
        if exc is None:
            future.set_result(None)
        else:
            future.set_exception(exc)
