"""Bulk subscribe: deliver up to ``maxMessagesCount`` events per POST, as Dapr does.

The bus hands messages to the handler one at a time (with the subscription's concurrency raised
to at least the batch size); :class:`BulkHandler` parks each on a future and sends a batch when
it holds ``maxMessagesCount`` messages or ``maxAwaitDurationMs`` after its first one arrived.
Messages of one batch that route to different paths go in one POST per path.

The body: ``{"id", "type": "com.dapr.event.sent.bulk", "topic", "pubsubname", "metadata",
"entries": [{"entryId", "event", "contentType", "metadata"}]}`` (``application/json``); the answer
``{"statuses": [{"entryId", "status"}]}``.  Per entry SUCCESS / DROP / RETRY; a missing or unknown
status is RETRY; an unreadable answer retries them all; 404 drops them all; any other non-2xx
(or a connection error) retries them all.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import defaultdict
from typing import Any

import orjson

from bus.message import Message, Outcome
from runtime.api.body import field
from runtime.channel import AppChannel, AppUnavailable
from runtime.pubsub.app_delivery import EventPreparer, Prepared
from runtime.pubsub.cloudevents import BULK_EVENT_TYPE, CLOUDEVENT_CONTENT_TYPE

log = logging.getLogger("omnibus.runtime")

_STATUS = {"SUCCESS": Outcome.SUCCESS, "DROP": Outcome.DROP, "RETRY": Outcome.RETRY}
_Waiting = tuple[Message, "asyncio.Future[Outcome]"]


def entry_outcomes(status: int, body: bytes, entry_ids: list[str]) -> dict[str, Outcome]:
    """The outcome of every entry of one bulk POST from the app's answer."""
    if status == 404:
        return dict.fromkeys(entry_ids, Outcome.DROP)
    if not 200 <= status < 300:
        return dict.fromkeys(entry_ids, Outcome.RETRY)
    outcomes = dict.fromkeys(entry_ids, Outcome.RETRY)
    try:
        reply = orjson.loads(body)
        statuses = field(reply, "statuses")  # Go's case-insensitive match, as Dapr reads it
        for item in statuses:
            entry_id, value = field(item, "entryId"), field(item, "status")
            if entry_id in outcomes and isinstance(value, str):
                outcomes[entry_id] = _STATUS.get(value, Outcome.RETRY)
    except (orjson.JSONDecodeError, TypeError, KeyError, AttributeError):
        log.warning("unreadable bulk answer from the app; retrying %d entries", len(entry_ids))
        return dict.fromkeys(entry_ids, Outcome.RETRY)
    return outcomes


class BulkHandler:
    """The bus handler of a subscription with ``bulkSubscribe.enabled``."""

    def __init__(self, preparer: EventPreparer, channel: AppChannel) -> None:
        self._preparer = preparer
        self._channel = channel
        spec = preparer.spec
        self._max = spec.bulk.max_messages
        self._wait = spec.bulk.max_await_ms / 1000.0
        self._waiting: list[_Waiting] = []
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __call__(self, message: Message) -> Outcome:
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._waiting.append((message, future))
        if len(self._waiting) >= self._max:
            self._flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._wait, self._flush)
        return await future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._waiting = self._waiting, []
        batch = [(m, f) for m, f in batch if not f.done()]  # cancelled: handed back by the bus
        if batch:
            task = asyncio.create_task(self._send(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[_Waiting]) -> None:
        by_path: dict[str, list[tuple[Prepared, _Waiting]]] = defaultdict(list)
        for waiting in batch:
            prepared = self._preparer.prepare(waiting[0])
            if isinstance(prepared, Outcome):
                _settle(waiting[1], prepared)
            else:
                by_path[prepared.path].append((prepared, waiting))
        await asyncio.gather(*(self._post(path, items) for path, items in by_path.items()))

    async def _post(self, path: str, items: list[tuple[Prepared, _Waiting]]) -> None:
        spec = self._preparer.spec
        entries: list[dict[str, Any]] = []
        for prepared, (message, _) in items:
            entries.append(
                {
                    "entryId": message.id,
                    "event": orjson.Fragment(prepared.event),
                    "contentType": CLOUDEVENT_CONTENT_TYPE,
                    "metadata": dict(prepared.headers),
                }
            )
        body = orjson.dumps(
            {
                "id": str(uuid.uuid4()),
                "type": BULK_EVENT_TYPE,
                "topic": spec.topic,
                "pubsubname": spec.pubsubname,
                "metadata": {},
                "entries": entries,
            }
        )
        ids = [message.id for _, (message, _) in items]
        try:
            status, answer = await self._channel.post(
                path, body, {"Content-Type": "application/json"}
            )
        except AppUnavailable as exc:
            log.warning("bulk delivery of %d events of %s failed: %s", len(ids), spec.topic, exc)
            status, answer = 503, b""
        outcomes = entry_outcomes(status, answer, ids)
        for _, (message, future) in items:
            _settle(future, outcomes[message.id])


def _settle(future: asyncio.Future[Outcome], outcome: Outcome) -> None:
    if not future.done():
        future.set_result(outcome)
