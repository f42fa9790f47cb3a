"""``omnibus dlq``: look at and replay the dead letters of a topic.

Dead letters are ordinary messages on the dead-letter topic (``<topic>.deadletter`` unless a
subscription names another), so both commands work on every backend through the Broker contract:

- ``list`` browses the topic (``Broker.browse``): nothing is consumed or acked.
- ``replay`` consumes the dead-letter topic as the consumer group ``omnibus-dlq``, one message at a
  time: each is republished to the topic (a new bus message carrying the same bytes, so the
  CloudEvent and its id are unchanged) and acked for that group only after the publish returned.
  A crash in between means the message is replayed again (at-least-once).  A message replayed
  once is not replayed by a later run; other groups subscribed to the dead-letter topic are not
  affected, and the broker drops a message once every group has acked it.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

from bus.broker import BaseBroker
from bus.message import Message, Outcome
from bus.options import FOREVER, RetryPolicy, SubscriptionOptions

DLQ_GROUP = "omnibus-dlq"
_PREVIEW = 60


def dead_letter_topic(topic: str, override: str | None = None) -> str:
    """The dead-letter topic of ``topic``: ``override`` or ``<topic>.deadletter``."""
    return override or f"{topic}.deadletter"


def preview(message: Message, width: int = _PREVIEW) -> str:
    """A one-line glimpse of the payload: a CloudEvent's ``data``, else the bytes as text."""
    text = message.data.decode("utf-8", errors="replace")
    try:
        event = json.loads(message.data)
    except ValueError:
        event = None
    if isinstance(event, dict) and "specversion" in event:
        if "data" in event:
            data = event["data"]
            text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
        elif "data_base64" in event:
            text = f"<base64> {event['data_base64']}"
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """How many dead letters went back to the topic, and the error that stopped it, if any."""

    replayed: int
    error: str | None = None


class _Replayer:
    """The handler of the ``omnibus-dlq`` subscription: republish, then ack; stop at the limit.

    The handler that reaches the limit (or fails) holds its slot until :func:`replay` has begun
    to stop the subscription: with one slot, the subscription cannot take one more message that
    it would then have to hand back.
    """

    def __init__(self, broker: BaseBroker, target: str, limit: int) -> None:
        self.broker = broker
        self.target = target
        self.limit = limit
        self.replayed = 0
        self.error: str | None = None
        self.progress = asyncio.Event()
        self.done = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, message: Message) -> Outcome:
        if self.done.is_set():  # only if a fetch raced the stop: not acked, handed back
            await self.release.wait()
            return Outcome.RETRY
        copy = Message(data=message.data, metadata=message.metadata)
        try:
            await self.broker.publish(self.target, [copy])
        except Exception as exc:
            self.error = f"republishing {message.id} to {self.target} failed: {exc}"
            self.done.set()
            await self.release.wait()
            return Outcome.RETRY  # not acked: it stays a dead letter
        self.replayed += 1
        self.progress.set()
        if self.replayed >= self.limit:
            self.done.set()
            await self.release.wait()
        return Outcome.SUCCESS


async def replay(
    broker: BaseBroker, topic: str, *, source: str, limit: int, idle: float = 2.0
) -> ReplayResult:
    """Move up to ``limit`` messages from ``source`` back to ``topic``.

    Stops at the limit, at the first failed publish, or once no message arrived for ``idle``
    seconds (the dead-letter topic has nothing more for the group).
    """
    replayer = _Replayer(broker, topic, limit)
    options = SubscriptionOptions(
        group=DLQ_GROUP,
        concurrency=1,  # one at a time: order kept, and never more than the limit taken
        batch_size=1,
        # a failed republish is handed back at once, with nothing dead-lettered further
        retry=RetryPolicy(max_attempts=FOREVER, initial_interval=0.0, jitter=0.0),
    )
    subscription = await broker.subscribe(source, replayer, options)
    try:
        while not replayer.done.is_set():
            replayer.progress.clear()
            waiters = [asyncio.ensure_future(e.wait()) for e in (replayer.progress, replayer.done)]
            finished, pending = await asyncio.wait(
                waiters, timeout=idle, return_when=asyncio.FIRST_COMPLETED
            )
            for waiter in pending:
                waiter.cancel()
            if not finished:
                break
    finally:
        stopping = asyncio.create_task(subscription.stop())
        await asyncio.sleep(0)  # stop() cancels intake first; then the held handler may finish
        replayer.release.set()
        await stopping
    return ReplayResult(replayer.replayed, replayer.error)
