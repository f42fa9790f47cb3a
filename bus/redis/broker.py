"""The Redis Streams broker: request/reply, presence and the topology of a topic.

The storage layout is described in the package docstring (:mod:`bus.redis`).
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from redis import exceptions as rexc
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

from bus.broker import BaseBroker
from bus.delivery import Source
from bus.errors import BrokerClosed, BrokerError, ConfigError, PublishError
from bus.message import Message, stored_age
from bus.options import SubscriptionOptions
from bus.presence import HEARTBEAT_TTL, Presence
from bus.presence_keys import instance_of, storage_instance
from bus.redis._scripts import Scripts
from bus.redis._source import RedisSource
from bus.redis._wire import (
    PackedConnection,
    PackedSSLConnection,
    call_raw,
    decode,
    decode_reply,
    encode,
    encode_reply,
    pairs,
    translate,
)
from bus.redis.link import RedisLink, RedisListener
from bus.redis.settings import Command, RedisAddress, RedisSettings

log = logging.getLogger("omnibus.bus.redis")

_PRESENCE_KEEP = HEARTBEAT_TTL * 10


class RedisBroker(BaseBroker):
    """A broker on Redis Streams; brokers on the same Redis see each other's messages."""

    def __init__(
        self,
        settings: RedisSettings | None = None,
        *,
        instance: str | None = None,
        drain_timeout: float = 5.0,
    ) -> None:
        super().__init__(instance=instance, drain_timeout=drain_timeout)
        self.settings = settings if settings is not None else RedisSettings()
        self._client: Redis | None = None
        self._link: RedisLink | None = None
        self._scripts: Scripts | None = None
        self._listener: RedisListener | None = None
        self._clock_offset_ms = 0.0  # Redis' clock minus our monotonic one, see _sync_clock

    @property
    def client(self) -> Redis:
        """The connected redis-py client."""
        if self._client is None:
            raise BrokerClosed("the Redis broker is not connected")
        return self._client

    @property
    def scripts(self) -> Scripts:
        """The registered Lua scripts."""
        if self._scripts is None:
            raise BrokerClosed("the Redis broker is not connected")
        return self._scripts

    async def _connect(self) -> None:
        s = self.settings
        connection: dict[str, Any] = {
            "host": s.host,
            "port": s.port,
            "db": s.db,
            "username": s.username,
            "password": s.password,
            "socket_connect_timeout": s.dial_timeout,
            # No socket time-out: redis-py 8.1's read time-out swallows task cancellation
            # (a cancelled command returns normally), which would hang shutdown.  The reads
            # and writes that matter are bounded with asyncio.timeout here instead.
            "socket_timeout": None,
            # A few quick retries hide a blip; a server that stays down reaches the caller.
            "retry": Retry(ExponentialWithJitterBackoff(cap=0.5, base=0.05), 2),
        }
        pool = ConnectionPool(
            connection_class=PackedSSLConnection if s.tls else PackedConnection,
            max_connections=1000,
            **connection,
        )
        client = Redis.from_pool(pool)  # closing the client closes the pool
        try:
            await client.ping()
        except Exception as exc:
            await client.aclose()
            raise translate(exc, f"connecting to {s.address}") from exc
        self._client = client
        self._link = RedisLink(RedisAddress.of(s), timeout=s.read_timeout + s.write_timeout)
        self._scripts = Scripts(client)
        await self._sync_clock()
        if s.wait_aof:
            await self._check_waitaof(client)

    async def _check_waitaof(self, client: Redis) -> None:
        """waitAOF needs WAITAOF (Redis 7.2+): refuse to start rather than fail every publish."""
        [found] = await self.send([("COMMAND", "INFO", "WAITAOF")])
        if not found or found[0] is None:  # one nil per unknown command
            version = (await client.info("server")).get("redis_version", "unknown")
            await self._disconnect()
            raise ConfigError(
                f"waitAOF: the Redis server at {self.settings.address} (version {version}) has "
                "no WAITAOF command (Redis 7.2 and later); remove waitAOF or upgrade Redis"
            )

    async def _sync_clock(self) -> None:
        """Estimate Redis' clock minus our monotonic clock (ms) from one TIME, halving its round
        trip.  Against the monotonic clock, not the wall clock: a step of this host's wall clock
        (NTP, a VM resumed) must not make waiting calls look expired or fresh."""
        before = time.monotonic()
        seconds, micros = await self.client.time()
        after = time.monotonic()
        self._clock_offset_ms = seconds * 1000 + micros / 1000 - (before + after) * 500

    def _call_age(self, request: Message) -> float | None:
        """How long the call waited since Redis stored it, on Redis' clock (seconds)."""
        return stored_age(request, self._clock_offset_ms, clock=time.monotonic)

    async def _disconnect(self) -> None:
        if self._listener is not None:
            await self._listener.close()
        if self._link is not None:
            await self._link.close()
        if self._client is not None:
            await self._client.aclose()
        self._client = self._link = self._scripts = self._listener = None

    async def send(self, commands: Sequence[Command]) -> list[Any]:
        """Run ``commands`` in order on the broker's pipelined link; their raw RESP2 replies.

        Concurrent callers share the connection, each gets its own replies; an error reply fails
        the caller's whole group with :class:`PublishError`.
        """
        replies = await self._live_link().run(commands)
        for reply in replies:
            if isinstance(reply, rexc.ResponseError):
                raise PublishError(f"Redis refused a write: {reply}")
        return replies

    def _xadd(self, topic: str, message: Message) -> Command:
        cap = self.settings.max_len_approx
        data, meta = encode(message)
        if cap:
            return ("XADD", topic, "MAXLEN", "~", cap, "*", "data", data, "metadata", meta)
        return ("XADD", topic, "*", "data", data, "metadata", meta)

    async def _publish(self, topic: str, batch: Sequence[Message]) -> None:
        commands = [self._xadd(topic, message) for message in batch]
        wait = self._durability_wait()
        if wait is None:
            await self.send(commands)
            return
        # On the connection of the XADDs (one pipeline): it waits for every write before it.
        replies = await self.send([*commands, wait])
        self._check_durability(replies[-1])

    def _durability_wait(self) -> tuple[Any, ...] | None:
        """WAIT / WAITAOF per waitReplicas / waitAOF, or None (XADD's reply is enough)."""
        s = self.settings
        timeout_ms = int(s.wait_timeout * 1000)
        if s.wait_aof:
            return ("WAITAOF", 1, s.wait_replicas, timeout_ms)
        if s.wait_replicas:
            return ("WAIT", s.wait_replicas, timeout_ms)
        return None

    def _check_durability(self, reply: Any) -> None:
        s = self.settings
        local, replicas = (int(reply[0]), int(reply[1])) if s.wait_aof else (1, int(reply))
        if local < 1 or replicas < s.wait_replicas:
            raise PublishError(
                f"Redis took the publish, but within {s.wait_timeout:g}s only {replicas} of "
                f"{s.wait_replicas} replicas acknowledged it"
                + (" and it was not fsynced to the local AOF" if local < 1 else "")
            )

    async def _open_source(self, topic: str, options: SubscriptionOptions) -> Source[Any]:
        source = RedisSource(self, topic, options)
        try:
            await source.create_group()
        except Exception as exc:
            raise translate(exc, f"creating group {options.group} on {topic}") from exc
        return source

    async def trim(self, topic: str) -> None:
        """Drop the entries of ``topic`` that every group has acked."""
        with contextlib.suppress(rexc.ResponseError):
            await self.scripts.low_water(keys=[topic], args=[1])

    async def _browse(self, topic: str, limit: int) -> list[Message]:
        try:
            low = await self.scripts.low_water(keys=[topic], args=[0])
        except rexc.ResponseError:  # no such stream
            return []
        entries: Any = await call_raw(self.client, "XRANGE", topic, low or "-", "+", "COUNT", limit)
        return [decode(topic, entry_id, fields, 1) for entry_id, fields in entries]

    # -- request/reply ----------------------------------------------------------------------

    async def _open_inbox(self, deliver: Callable[[Message], None]) -> str:
        channel = f"omnibus:inbox:{self.instance}.{uuid.uuid4().hex[:8]}"

        def received(payload: bytes) -> None:
            try:
                reply = decode_reply(payload)
            except (ValueError, KeyError, TypeError):
                log.exception("unreadable reply on the inbox")
                return
            deliver(reply)

        s = self.settings
        # Pub/Sub keeps nothing for a channel nobody listens on: a reply published while the
        # inbox was away is gone, so whoever waits gets ReplyLost rather than a time-out (the
        # listener reports the loss and, again, the return).
        listener = RedisListener(
            RedisAddress.of(s),
            channel,
            received,
            self._inbox_lost,
            timeout=s.read_timeout + s.write_timeout,
            client_name=f"omnibus-inbox-{self.instance}",
        )
        await listener.start()
        self._listener = listener
        return channel

    async def _inbox_connected(self, timeout: float) -> None:
        if self._listener is not None:
            await self._listener.wait_connected(timeout)

    async def _publish_call(self, topic: str, request: Message, ttl: float) -> None:
        # The caller waits for the reply, not for the XADD's answer: the request is posted, and
        # a refusal or a lost connection fails the caller's wait at once.  Never sent twice: a
        # call runs at most once.  No WAIT/WAITAOF: a call is worthless after its time-out.
        inbox, correlation_id = self._inbox, request.correlation_id

        def refused(error: BrokerError) -> None:
            if inbox is not None and correlation_id is not None:
                inbox.fail(correlation_id, error)

        await self._live_link().post([self._xadd(topic, request)], refused)

    async def _send_reply(self, address: str, reply: Message) -> None:
        # Posted: nobody waits for PUBLISH's answer; a reply lost with the connection shows at
        # the caller (ReplyLost or its time-out).
        await self._live_link().post([("PUBLISH", address, encode_reply(reply))], _reply_failed)

    def _live_link(self) -> RedisLink:
        if self._link is None:
            raise BrokerClosed("the Redis broker is not connected")
        return self._link

    # -- presence ---------------------------------------------------------------------------

    async def _beat(self, entries: Sequence[Presence]) -> None:
        now = time.time()
        keep = int(_PRESENCE_KEEP)
        commands: list[tuple[Any, ...]] = []
        for entry in entries:
            info = orjson.dumps(
                {
                    "address": entry.address,
                    "started": entry.started,
                    "metadata": dict(entry.metadata),
                }
            )
            beats, infos = _presence_keys(entry.name)
            commands += [
                ("ZADD", "omnibus:presence:names", now, entry.name),
                ("ZADD", beats, now, storage_instance(entry)),
                ("ZREMRANGEBYSCORE", beats, "-inf", now - keep),
                ("HSET", infos, storage_instance(entry), info),
                ("EXPIRE", beats, keep),
                ("EXPIRE", infos, keep),
            ]
        commands.append(("ZREMRANGEBYSCORE", "omnibus:presence:names", "-inf", now - keep))
        await self.send(commands)
        await self._sync_clock()  # clocks drift: re-estimate with every heartbeat

    async def _remove_presence(self, entry: Presence) -> None:
        beats, infos = _presence_keys(entry.name)
        key = storage_instance(entry)
        await self.send([("ZREM", beats, key), ("HDEL", infos, key)])

    async def _list_presence(self, name: str | None) -> list[Presence]:
        since = time.time() - HEARTBEAT_TTL
        if name is None:
            [raw] = await self.send([("ZRANGEBYSCORE", "omnibus:presence:names", since, "+inf")])
            names = [n.decode() for n in raw]
        else:
            names = [name]
        commands: list[Command] = []
        for each in names:
            beats, infos = _presence_keys(each)
            commands += [("ZRANGEBYSCORE", beats, since, "+inf", "WITHSCORES"), ("HGETALL", infos)]
        replies = await self.send(commands) if commands else []
        found: list[Presence] = []
        for each, live, details in zip(names, replies[::2], replies[1::2], strict=True):
            found += _presences(each, live, pairs(details))
        return found


def _reply_failed(error: BrokerError) -> None:
    log.warning("a reply could not be sent: %s", error)


def _presences(name: str, live: list[bytes], details: dict[bytes, bytes]) -> list[Presence]:
    found = []
    for instance, beat in zip(live[::2], live[1::2], strict=True):  # RESP2: member, score, ...
        raw = details.get(instance)
        info = orjson.loads(raw) if raw else {}
        found.append(
            Presence(
                name=name,
                instance=instance_of(instance.decode()),
                address=info.get("address", ""),
                started=float(info.get("started", beat)),
                last_beat=float(beat),
                metadata=info.get("metadata", {}),
            )
        )
    return found


def _presence_keys(name: str) -> tuple[str, str]:
    return f"omnibus:presence:beats:{name}", f"omnibus:presence:info:{name}"
