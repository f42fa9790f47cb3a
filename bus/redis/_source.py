"""The consuming side of the Redis broker: one Source per group, claims and retries."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from redis import exceptions as rexc
from redis.asyncio import Redis

from bus.errors import BrokerError
from bus.message import Message
from bus.options import SubscriptionOptions
from bus.redis._scripts import Scripts
from bus.redis._wire import LINK_ERRORS, decode, encode, pairs, reconnecting
from bus.redis.link import RedisLink
from bus.redis.settings import RedisAddress, RedisSettings

log = logging.getLogger("omnibus.bus.redis")

T = TypeVar("T")


@dataclass(slots=True)
class RedisDelivery:
    message: Message
    entry_id: bytes


class StreamHost(Protocol):
    """What a source needs of its broker (the broker imports the source, never the reverse)."""

    instance: str
    settings: RedisSettings

    @property
    def client(self) -> Redis:
        """The shared client (pooled connections)."""

    @property
    def scripts(self) -> Scripts:
        """The Lua scripts, loaded."""

    async def trim(self, topic: str) -> None:
        """Trim ``topic`` to what some group still needs."""

    async def send(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Commands on the broker's pipelined link (acks, retry records); their raw replies."""


class RedisSource:
    """One consumer (this instance) of one group on one stream."""

    def __init__(self, broker: StreamHost, topic: str, options: SubscriptionOptions) -> None:
        self._broker = broker
        self._redis = broker.client
        self._topic = topic
        self._group = options.group
        self._consumer = broker.instance
        self._retry_key = f"omnibus:retry:{topic}:{options.group}"
        self._min_idle_ms = int(options.lease * 1000)
        settings = broker.settings
        self._interval = settings.redeliver_interval
        self._block = max(0.001, min(1.0, settings.read_timeout / 2))
        self._trim_every = min(settings.redeliver_interval, 1.0)
        self._io_timeout = settings.read_timeout + settings.write_timeout
        self._next_claim = 0.0  # monotonic times
        self._next_due = 0.0
        self._local_due = math.inf
        self._next_trim = 0.0
        self._reading = reconnecting(f"reading {topic}")
        self._reader: RedisLink | None = None  # the blocking reads' own connection

    async def create_group(self) -> None:
        """Create the group at the start of the stream (and the stream) unless it exists."""
        try:
            await self._redis.xgroup_create(self._topic, self._group, id="0", mkstream=True)
        except rexc.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def fetch(self, limit: int) -> Sequence[RedisDelivery]:
        """Due retries and reclaimed entries first, then new entries (blocking briefly)."""
        try:  # the common case without tenacity's bookkeeping: it runs once per read
            return await self._fetch_bounded(limit)
        except LINK_ERRORS:  # the connection is down: back off and retry until it is back
            return await self._reading(self._fetch_bounded, limit)

    async def _fetch_bounded(self, limit: int) -> list[RedisDelivery]:
        async with asyncio.timeout(self._block + self._io_timeout):
            return await self._fetch_once(limit)

    async def _fetch_once(self, limit: int) -> list[RedisDelivery]:
        try:
            now = time.monotonic()
            if now >= min(self._next_claim, self._next_due):
                idle = now >= self._next_claim
                if idle:  # the periodic reclaim also trims what every group has acked
                    await self._trim_quietly()
                claimed = await self._claim(limit, idle=idle)
                if claimed:
                    return claimed
            wake = min(self._next_claim, self._next_due) - time.monotonic()
            block_ms = max(1, int(min(self._block, wake) * 1000))
            reply: Any = await self._read(
                "XREADGROUP",
                "GROUP",
                self._group,
                self._consumer,
                "COUNT",
                limit,
                "BLOCK",
                block_ms,
                "STREAMS",
                self._topic,
                ">",
            )
        except rexc.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            log.warning(
                "group %s of %s is gone (Redis restarted?); recreating", self._group, self._topic
            )
            await self.create_group()
            return []
        if not reply:
            return []
        # the raw reply: {stream: [[id, [field, value, ...]], ...]} in RESP3 (redis-py's
        # default), [[stream, [...]]] in RESP2
        entries = next(iter(reply.values())) if isinstance(reply, dict) else reply[0][1]
        return [
            RedisDelivery(decode(self._topic, entry_id, pairs(fields), 1), entry_id)
            for entry_id, fields in entries
            if fields is not None
        ]

    async def _read(self, *args: Any) -> Any:
        """One command on this source's own link, its raw reply (an error reply raised).

        A blocking XREADGROUP holds its connection for up to BLOCK ms, so it cannot share the
        broker's link; this one is the source's alone.
        """
        if self._reader is None:
            self._reader = RedisLink(
                RedisAddress.of(self._broker.settings),
                timeout=self._block + self._io_timeout,
                retries=0,  # fetch backs off and retries itself
            )
        [reply] = await self._reader.run([args])
        if isinstance(reply, rexc.ResponseError):
            raise reply
        return reply

    async def _claim(self, limit: int, *, idle: bool) -> list[RedisDelivery]:
        # Retries scheduled while the script runs may miss its answer: remember them apart.
        self._local_due = math.inf
        reply = await self._broker.scripts.claim(
            keys=[self._topic, self._retry_key],
            args=[
                self._group,
                self._consumer,
                int(time.time() * 1000),
                limit,
                self._min_idle_ms if idle else -1,
            ],
        )
        # Nothing may be awaited from here on: the script has claimed the entries (and raised
        # their delivery count), so losing them now would hide them for a processingTimeout.
        now = time.monotonic()
        if idle:
            self._next_claim = now + self._interval
        next_due_ms, trimmed = int(reply[0]), int(reply[1])
        stored_due = (
            math.inf if next_due_ms < 0 else now + max(0.0, next_due_ms / 1000 - time.time())
        )
        self._next_due = min(stored_due, self._local_due)
        if trimmed:
            log.warning(
                "%d pending entries of %s (group %s) were trimmed away before delivery; acked",
                trimmed,
                self._topic,
                self._group,
            )
        rest = reply[2:]
        return [
            RedisDelivery(
                decode(self._topic, rest[i], pairs(rest[i + 1]), int(rest[i + 2])), rest[i]
            )
            for i in range(0, len(rest), 3)
        ]

    async def _trim_quietly(self) -> None:
        """Trim before claiming, never after: a trim that fails must not lose claimed entries."""
        try:
            await self._broker.trim(self._topic)
        except (rexc.RedisError, BrokerError) as exc:
            log.warning("trimming %s failed (%s); claiming anyway", self._topic, exc)

    async def ack(self, deliveries: Sequence[RedisDelivery]) -> None:
        """One XACK for the whole batch; then trim the stream now and then."""
        ids = [d.entry_id for d in deliveries]
        await self._settling(
            "acking", self._broker.send, [("XACK", self._topic, self._group, *ids)]
        )
        if time.monotonic() >= self._next_trim:
            self._next_trim = time.monotonic() + self._trim_every
            await self._broker.trim(self._topic)

    async def retry(self, delivery: RedisDelivery, delay: float) -> None:
        """Record when the entry is due again; it stays pending meanwhile."""
        due_ms = int((time.time() + delay) * 1000)
        await self._settling(
            "scheduling a retry",
            self._broker.send,
            [("ZADD", self._retry_key, due_ms, delivery.entry_id)],
        )
        due = time.monotonic() + delay
        self._next_due = min(self._next_due, due)
        self._local_due = min(self._local_due, due)

    async def dead_letter(self, delivery: RedisDelivery, topic: str) -> None:
        """XADD to ``topic``, XACK and forget the retry record, in one script."""
        data, meta = encode(delivery.message)
        await self._settling(
            "dead-lettering",
            self._broker.scripts.dead_letter,
            keys=[self._topic, topic, self._retry_key],
            args=[
                self._group,
                delivery.entry_id,
                data,
                meta,
                self._broker.settings.max_len_approx or 0,
            ],
        )

    async def release(self, deliveries: Sequence[RedisDelivery]) -> None:
        """Make unsettled deliveries due at once, for any consumer of the group."""
        now_ms = int(time.time() * 1000)
        async with asyncio.timeout(self._io_timeout):  # shutdown must not hang on a dead link
            pairs_ = [x for d in deliveries for x in (now_ms, d.entry_id)]
            await self._broker.send([("ZADD", self._retry_key, *pairs_)])

    async def close(self) -> None:
        """Forget this consumer in the group if it holds no pending entries."""
        if self._reader is not None:
            await self._reader.close()
            self._reader = None
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self._io_timeout):
                await self._broker.scripts.drop_consumer(
                    keys=[self._topic], args=[self._group, self._consumer]
                )

    async def _settling(
        self, what: str, call: Callable[..., Awaitable[T]], *args: Any, **kw: Any
    ) -> T:
        async def attempt() -> T:  # tenacity awaits coroutine functions only
            async with asyncio.timeout(self._io_timeout):
                return await call(*args, **kw)

        try:
            return await attempt()
        except LINK_ERRORS:  # the connection is down: back off and retry for a while
            retrying = reconnecting(f"{what} on {self._topic}", give_up_after=self._interval)
            return await retrying(attempt)
