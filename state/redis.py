"""``state.redis``: Dapr's Redis state layout, so Dapr and omnibus sidecars share keys.

Storage layout (one Redis HASH per state key, the key being the prefixed state key itself)::

    HASH <key>            e.g. "myapp||order-1"
      data         the value's bytes exactly as saved (JSON text for JSON values)
      version      the etag: an integer as text, incremented by every write (HINCRBY)
      first-write  "0", present once the key was saved with first-write concurrency (as Dapr)
    TTL            the key's own expiry (EXPIRE ttlInSeconds; PERSIST for -1 or no TTL)

    STREAM omnibus:outbox:<store-name>          the change feed's outbox (state.feed)
      one entry per recorded change, in commit order: id (the CloudEvent id), op ("upsert" |
      "delete"), key (the app's key), app, etag and value (upserts), time (epoch seconds);
      appended by the write's own script or MULTI/EXEC, XDELed once its event is published
      (the key may stay behind, empty)
    STRING omnibus:outbox-relay:<store-name>    the relay lease: the holding relay's id, with
      a PX expiry; taken when absent, renewed by its holder, DELeted by it when it stops

Saves and deletes with their etag and first-write checks are single Lua scripts (Dapr's, with the
TTL folded in so a save and its expiry are atomic, and the outbox entry when the request carries
a journal, so a change and its record are one script).  A transaction WATCHes its keys, checks
every etag in order against the versions read, and writes in MULTI/EXEC, retrying if a key
changed in between: all or nothing, unlike Dapr's MULTI of scripts, which cannot roll back; its
outbox entries are in the same MULTI/EXEC, with the versions the checks computed.  The relay
claims with one script (lease check and renewal, then XRANGE of the oldest entries) and forgets
by entry id (XDEL), so a late delete removes only what it published (the scripts and the
entries' fields: :mod:`state._redis_scripts`).  Bulk gets are one pipeline of HGETALL +
PEXPIRETIME.  A plain string key (written by very old Dapr versions) reads with no etag and is
replaced by the next save.

Expiry is not on this store's change feed: Redis drops an expired key itself (EXPIRE) and
omnibus would see that only through keyspace notifications, which it does not use; so a key whose
TTL passes has no ``expire`` event here.  ``state.sqlite``, ``state.postgresql`` and
``state.in-memory`` do report expiry (from their own purge, :mod:`state.feed`).

Queries (``/v1.0-alpha1/state/{store}/query``) do not use RediSearch or ``queryIndexes`` (Dapr's
Redis query needs RediSearch and RedisJSON, which a plain Redis lacks): they SCAN the keys of the
app's prefix (``SCAN MATCH <prefix>* COUNT 1000``), read ``data`` and ``version`` of each page of
keys in one pipeline (HMGET + PEXPIRETIME), and filter, sort and page the JSON values in Python
with the evaluator of :mod:`state.query`, as ``state.in-memory`` does.  The cost grows with the
number of keys under the prefix on every query: fine for thousands of keys, not for millions.
Each result is consistent in itself (its value and etag are read together) but the results are not
a snapshot: a key written during the scan may be seen before or after its change, or missed if it
is created then.  Keys that are not hashes of this layout (the outbox stream and relay lease with
the ``none`` prefix, a plain string from old Dapr, another program's keys), and values that are not
JSON, are left out.

Where the contract of :mod:`state.store` and Dapr's scripts disagree, the contract wins (all
stores behave alike): an etag is checked whenever one is given (Dapr ignores it under an explicit
last-write); first-write without an etag refuses any existing key, and the ``first-write`` field
does not block later saves without etag (Dapr refuses those once the field is set); a delete with
an etag of a missing key is an ETagMismatch (Dapr reports success).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError, WatchError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bus.errors import BrokerError, BrokerUnavailable
from bus.redis.link import RedisLink
from bus.redis.settings import Command, RedisAddress
from state import _redis_scripts as scripts
from state._common import InFlight, given_etag, needs_absent
from state._redis_query import expires_at, scan_items
from state.errors import (
    BulkError,
    ETagInvalid,
    ETagMismatch,
    StateError,
    StoreUnavailable,
)
from state.query import parse_query, run_query
from state.store import (
    BulkItem,
    DeleteRequest,
    Feature,
    Item,
    Operation,
    QueryResult,
    RecordedChange,
    SetRequest,
    StoreLifecycle,
)

_MISMATCH = "ETAG_MISMATCH"
_WATCH_RETRIES = 10
_CLOSE_GRACE = 5.0


@dataclass(frozen=True, slots=True)
class RedisStoreSettings(RedisAddress):
    """Parsed ``state.redis`` metadata: where the server is, then the store's own settings;
    durations in seconds, ``ttl`` the default TTL.

    Retries of a failed connection follow Dapr's defaults (3, backing off 8 ms to 512 ms).
    """

    actor_state_store: bool = False
    ttl: int | None = None
    read_timeout: float = 3.0
    pool_size: int | None = None
    max_retries: int = 3
    min_retry_backoff: float = 0.008
    max_retry_backoff: float = 0.512


# Dapr's default poolSize is ten connections per CPU.
_DEFAULT_POOL = 10 * (os.cpu_count() or 1)


class RedisStore(StoreLifecycle):
    """A state store on Redis hashes, shareable with Dapr's state.redis."""

    def __init__(self, name: str, settings: RedisStoreSettings) -> None:
        self.name = name
        self.settings = settings
        base = {Feature.ETAG, Feature.TRANSACTIONAL, Feature.TTL, Feature.QUERY_API}
        self.features = frozenset(base | ({Feature.ACTOR} if settings.actor_state_store else set()))
        self._client: aioredis.Redis | None = None
        self._link: RedisLink | None = None
        self._inflight = InFlight()
        self._outbox = scripts.OUTBOX_KEY.format(store=name)
        self._lease = scripts.LEASE_KEY.format(store=name)

    async def connect(self) -> None:
        """Create the client and check the server answers."""
        if self._client is not None:
            return
        s = self.settings
        # A blocking pool: a burst beyond poolSize waits for a free connection (bounded by the
        # dial time-out) instead of failing with "Too many connections".
        pool = aioredis.BlockingConnectionPool(
            connection_class=aioredis.SSLConnection if s.tls else aioredis.Connection,
            max_connections=s.pool_size or _DEFAULT_POOL,
            timeout=s.dial_timeout,
            host=s.host,
            port=s.port,
            db=s.db,
            username=s.username,
            password=s.password,
            socket_connect_timeout=s.dial_timeout,
            socket_timeout=s.read_timeout,
            retry=Retry(
                ExponentialWithJitterBackoff(cap=s.max_retry_backoff, base=s.min_retry_backoff),
                s.max_retries,
            ),
        )
        client = aioredis.Redis(connection_pool=pool)
        try:
            await client.ping()
        except RedisError as exc:
            await client.aclose(close_connection_pool=True)
            raise _translate(self.name, exc) from exc
        self._client = client
        self._link = RedisLink(RedisAddress.of(s), timeout=s.read_timeout, retries=s.max_retries)

    async def close(self) -> None:
        """Let running operations finish (a few seconds at most), then close the connections."""
        await self._inflight.wait_idle(_CLOSE_GRACE)
        client, self._client = self._client, None
        link, self._link = self._link, None
        if link is not None:
            await link.close()
        if client is not None:
            await client.aclose(close_connection_pool=True)

    @property
    def client(self) -> aioredis.Redis:
        """The connected client."""
        if self._client is None:
            raise StoreUnavailable(f"state store {self.name!r} is not connected")
        return self._client

    async def _run(self, commands: Sequence[Command]) -> list[Any]:
        """Commands on the store's pipelined link (gets, saves, deletes); their raw replies.

        Concurrent operations share one connection, each gets its own replies; an error reply
        stands in its command's place, a lost or silent server is StoreUnavailable.
        """
        if self._link is None:
            raise StoreUnavailable(f"state store {self.name!r} is not connected")
        try:
            return await self._link.run(commands)
        except BrokerUnavailable as exc:
            raise StoreUnavailable(f"state store {self.name!r}: Redis unreachable: {exc}") from exc
        except BrokerError as exc:
            raise StoreUnavailable(f"state store {self.name!r}: Redis error: {exc}") from exc

    async def _scripts(self, calls: Sequence[scripts.Call]) -> list[Any]:
        """Run scripts ``(script, keys, args)`` by EVALSHA; a server that lacks one (restarted,
        flushed) gets those calls again as EVAL, which loads them."""
        replies = await self._run(
            [("EVALSHA", script.sha, len(keys), *keys, *args) for script, keys, args in calls]
        )
        missing = [i for i, r in enumerate(replies) if _no_script(r)]
        if missing:
            again = await self._run(
                [
                    ("EVAL", script.source, len(keys), *keys, *args)
                    for script, keys, args in (calls[i] for i in missing)
                ]
            )
            for index, reply in zip(missing, again, strict=True):
                replies[index] = reply
        return replies

    async def get(self, key: str) -> Item | None:
        """The hash of ``key`` as an item."""
        return (await self.bulk_get([key]))[0].item

    async def bulk_get(self, keys: Sequence[str]) -> list[BulkItem]:
        """HGETALL and PEXPIRETIME of every key in one pipeline."""
        async with self._inflight:
            return await self._bulk_get_now(keys)

    async def _bulk_get_now(self, keys: Sequence[str]) -> list[BulkItem]:
        if not keys:
            return []
        commands: list[Command] = []
        for key in keys:
            commands += [("HGETALL", key), ("PEXPIRETIME", key)]
        replies = await self._run(commands)
        result = []
        for index, key in enumerate(keys):
            fields, expiry = replies[2 * index], replies[2 * index + 1]
            result.append(await self._bulk_item(key, fields, expiry))
        return result

    async def set(self, request: SetRequest) -> str:
        """Run the save script; its reply is the new version."""
        async with self._inflight:
            return await self._set_now(request)

    async def _set_now(self, request: SetRequest) -> str:
        [version] = await self._scripts([self._set_call(request)])
        if isinstance(version, ResponseError):
            raise _translate(self.name, version)
        return str(version)

    async def bulk_set(self, requests: Sequence[SetRequest]) -> None:
        """Every save script in one pipeline; BulkError lists the ones that failed."""
        async with self._inflight:
            return await self._bulk_set_now(requests)

    async def _bulk_set_now(self, requests: Sequence[SetRequest]) -> None:
        errors: list[tuple[str, StateError]] = []
        calls: list[scripts.Call] = []
        for request in requests:
            try:
                calls.append(self._set_call(request))
            except StateError as exc:
                errors.append((request.key, exc))
        replies = await self._scripts(calls) if calls else []
        for (_, keys, _), reply in zip(calls, replies, strict=True):
            if isinstance(reply, Exception):
                errors.append((keys[0], _translate(self.name, reply)))
        if errors:
            order = {request.key: i for i, request in enumerate(requests)}
            raise BulkError(sorted(errors, key=lambda e: order[e[0]]))

    async def delete(self, request: DeleteRequest) -> None:
        """Run the delete script."""
        async with self._inflight:
            return await self._delete_now(request)

    async def _delete_now(self, request: DeleteRequest) -> None:
        etag = given_etag(request)
        _check_etag(etag)
        keys, args = [request.key], [etag or ""]
        if request.journal is not None:
            keys.append(self._outbox)
            args += scripts.journal_args(request.journal)
        [reply] = await self._scripts([(scripts.DELETE, keys, args)])
        if isinstance(reply, ResponseError):
            raise _translate(self.name, reply)

    async def claim_changes(
        self, relay: str, *, lease: float, limit: int
    ) -> list[RecordedChange] | None:
        """One script: the lease checked and renewed, then XRANGE of the oldest entries."""
        args = [relay, max(1, int(lease * 1000)), limit]
        async with self._inflight:
            [reply] = await self._scripts([(scripts.CLAIM, [self._lease, self._outbox], args)])
        if isinstance(reply, Exception):
            raise _translate(self.name, reply)
        return None if reply is None else [scripts.recorded(entry) for entry in reply]

    async def forget_changes(self, changes: Sequence[RecordedChange]) -> None:
        """XDEL of the published entries."""
        if not changes:
            return
        async with self._inflight:
            [reply] = await self._run([("XDEL", self._outbox, *(c.position for c in changes))])
        if isinstance(reply, Exception):
            raise _translate(self.name, reply)

    async def release_changes(self, relay: str) -> None:
        """DEL of the lease if ``relay`` holds it."""
        async with self._inflight:
            [reply] = await self._scripts([(scripts.RELEASE, [self._lease], [relay])])
        if isinstance(reply, Exception):
            raise _translate(self.name, reply)

    async def transact(self, operations: Sequence[Operation]) -> None:
        """WATCH the keys, check etags in order, write in MULTI/EXEC; retry if a key changed."""
        async with self._inflight:
            return await self._transact_now(operations)

    async def _transact_now(self, operations: Sequence[Operation]) -> None:
        if not operations:
            return
        for operation in operations:
            _check_etag(given_etag(operation))
        keys = list(dict.fromkeys(op.key for op in operations))
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                for _ in range(_WATCH_RETRIES):
                    try:
                        await self._transact_once(pipe, keys, operations)
                        return
                    except WatchError:
                        continue
        except RedisError as exc:
            raise _translate(self.name, exc) from exc
        raise StoreUnavailable(f"state store {self.name!r}: transaction kept conflicting")

    async def query(self, query: Mapping[str, Any], key_prefix: str) -> QueryResult:
        """Filter, sort and page the JSON values under ``key_prefix`` (a SCAN, no RediSearch)."""
        parsed = parse_query(query)
        async with self._inflight:
            try:
                items = await scan_items(self.client, key_prefix)
            except RedisError as exc:
                raise _translate(self.name, exc) from exc
        keys, token = run_query(parsed, ((item.key, item.value) for item in items.values()))
        return QueryResult([items[key] for key in keys], token)

    async def _transact_once(
        self, pipe: Any, keys: list[str], operations: Sequence[Operation]
    ) -> None:
        await pipe.watch(*keys)
        versions: dict[str, int | None] = {}
        plain: set[str] = set()
        for key in keys:
            try:
                raw = await pipe.hget(key, "version")
            except ResponseError:  # not a hash: replaced, as the save script does
                raw = None
                plain.add(key)
            versions[key] = None if raw is None else int(raw)
        etags = [_simulate(versions, operation) for operation in operations]
        pipe.multi()
        for key in plain:
            pipe.delete(key)
        for operation, etag in zip(operations, etags, strict=True):
            self._queue(pipe, operation, etag)
        await pipe.execute()

    def _queue(self, pipe: Any, operation: Operation, etag: int | None) -> None:
        """The commands of one operation of a transaction; ``etag``: the version it leaves."""
        if isinstance(operation, DeleteRequest):
            pipe.delete(operation.key)
        else:
            pipe.hset(operation.key, "data", operation.value)
            if needs_absent(operation):
                pipe.hset(operation.key, "first-write", 0)
            pipe.hincrby(operation.key, "version", 1)
            ttl = self._ttl(operation)
            if ttl > 0:
                pipe.expire(operation.key, ttl)
            else:
                pipe.persist(operation.key)
        if operation.journal is not None:
            value = operation.value if isinstance(operation, SetRequest) else None
            pipe.xadd(self._outbox, scripts.outbox_fields(operation.journal, etag, value))

    def _ttl(self, request: SetRequest) -> int:
        ttl = self.settings.ttl if request.ttl is None else request.ttl
        return 0 if ttl is None or ttl < 0 else ttl

    def _set_call(self, request: SetRequest) -> scripts.Call:
        """The save script's call for ``request``, with the outbox entry if it has a journal."""
        etag = given_etag(request)
        _check_etag(etag)
        first_write = "1" if needs_absent(request) else "0"
        keys = [request.key]
        args = [etag or "", request.value, first_write, self._ttl(request)]
        if request.journal is not None:
            keys.append(self._outbox)
            args += scripts.journal_args(request.journal)
        return scripts.SET, keys, args

    async def _bulk_item(self, key: str, fields: Any, expiry: Any) -> BulkItem:
        if isinstance(fields, ResponseError):  # a plain string value, from before hashes
            return BulkItem(key, await self._plain(key))
        if isinstance(fields, Exception):
            return BulkItem(key, None, str(fields))
        if not fields:
            return BulkItem(key, None)
        fields = dict(zip(fields[::2], fields[1::2], strict=True))  # RESP2: field, value, ...
        data, version = fields.get(b"data"), fields.get(b"version")
        if data is None or version is None:
            return BulkItem(key, None, "required hash field 'data' or 'version' was not found")
        return BulkItem(key, Item(key, data, version.decode(), expires_at(expiry)))

    async def _plain(self, key: str) -> Item | None:
        try:
            value = await self.client.get(key)
        except RedisError:
            return None
        if value is None:
            return None
        return Item(key, value.encode() if isinstance(value, str) else value, None)


def _no_script(reply: Any) -> bool:
    return isinstance(reply, ResponseError) and str(reply).startswith("NOSCRIPT")


def _check_etag(etag: str | None) -> None:
    if etag is not None and not etag.lstrip("-").isdigit():
        raise ETagInvalid(f"etag {etag!r} is not an integer, as Redis etags are")


def _simulate(versions: dict[str, int | None], operation: Operation) -> int | None:
    """Apply one operation's checks to the versions a transaction has seen so far; the version
    it leaves (None: deleted)."""
    current = versions[operation.key]
    etag = given_etag(operation)
    if etag is not None and current != int(etag):
        raise ETagMismatch(f"etag mismatch for key {operation.key!r}")
    if isinstance(operation, SetRequest):
        if needs_absent(operation) and current is not None:
            raise ETagMismatch(f"first-write: key {operation.key!r} already exists")
        versions[operation.key] = (current or 0) + 1
    else:
        versions[operation.key] = None
    return versions[operation.key]


def _translate(name: str, exc: Exception) -> StateError:
    """Our error for a redis-py error."""
    if isinstance(exc, ResponseError) and _MISMATCH in str(exc):
        return ETagMismatch(f"etag mismatch (state store {name!r})")
    if isinstance(exc, RedisConnectionError | RedisTimeoutError | OSError):
        return StoreUnavailable(f"state store {name!r}: Redis unreachable: {exc}")
    return StoreUnavailable(f"state store {name!r}: Redis error: {exc}")
