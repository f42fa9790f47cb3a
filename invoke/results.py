"""Where async invocations are kept: their records, failed attempts, and the callee's replies.

invoke/ does not know state stores; it needs only the narrow :class:`ResultStore` protocol
(get/put/delete/list of bytes under string keys, with a TTL and an etag check), which the runtime
implements over a state store it chooses (an embedded ``state.sqlite`` on
``$OMNIBUS_HOME/invocations.db`` by default, so every sidecar on the machine shares it and results
survive a restart of either sidecar; or a state component such as Redis for several machines).

Storage layout (keys; app ids never contain ``|``, so keys cannot collide), every key kept for
the results TTL (default 24 h) from its last write:

    omnibus-invocation||<caller app>||<id>     the invocation record, JSON (see below)
    omnibus-invocation-attempts||<id>          failed attempts so far, decimal text (callee writes)
    omnibus-invocation-done||<callee>||<key>   the reply a callee sent for idempotency key <key>
                                               (namespace "done": the bus's Replies record,
                                               shared by every replica of the callee)

``<caller app>`` and ``<callee>`` are app ids, as ``<namespace>/<app-id>`` outside the default
namespace (:func:`~invoke.call.qualified_id`), so one app id in two namespaces sharing a store keeps
two sets of records; ids derived from an idempotency key include it too.  A record's ``callee``
is the target as Dapr writes it (``app-id`` or ``app-id.namespace``).

A record is JSON ``{"id", "caller", "callee", "method", "verb", "status", "created", "finished",
"attempts", "callback", "callbackDone", "key", "response": {"status", "headers": [[name, value]],
"body": base64} | null}``; times are seconds since the epoch.  Status changes go through
:meth:`Results.update`, a compare-and-set loop on the record's etag, so a result and a
cancellation racing each other never both win.
"""

from __future__ import annotations

import base64
import enum
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import orjson

from bus.envelope import Headers
from bus.errors import InvalidArgument
from bus.message import Message
from invoke.call import Reply
from invoke.errors import InvokeError

DEFAULT_TTL = 24 * 3600.0
RECORD_PREFIX = "omnibus-invocation||"
ATTEMPTS_PREFIX = "omnibus-invocation-attempts||"
DONE_PREFIX = "omnibus-invocation-done||"
_ID_NAMESPACE = uuid.UUID("6f6d6e69-6275-7300-8000-696e766f6b65")  # fixed: ids must be stable
_CAS_ROUNDS = 20


class ResultConflict(InvokeError):
    """A conditional write of the result store lost: the key changed or already existed."""

    code = "CONFLICT"


class ListingNotSupported(InvokeError):
    """The result store cannot list keys by prefix (it has no queries); get by id still works."""

    code = "NOT_SUPPORTED"


@dataclass(frozen=True, slots=True)
class Stored:
    """A value of the result store and the etag of its current version."""

    value: bytes
    etag: str


class ResultStore(Protocol):
    """The key-value store that keeps async invocations; implemented by the runtime."""

    async def get(self, key: str) -> Stored | None:
        """The value under ``key``, or None when absent or expired."""
        ...

    async def put(
        self, key: str, value: bytes, *, ttl: float, etag: str | None = None, create: bool = False
    ) -> None:
        """Save for ``ttl`` seconds; only over ``etag`` / only if absent (``create``), else
        :class:`ResultConflict`."""
        ...

    async def delete(self, key: str) -> None:
        """Remove ``key`` (absent is fine)."""
        ...

    async def list(self, prefix: str) -> list[bytes]:
        """Every live value whose key starts with ``prefix``; else :class:`ListingNotSupported`."""
        ...


class Status(enum.StrEnum):
    """Where an invocation stands; every status but PENDING is final."""

    PENDING = "pending"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


def invocation_id(caller: str, idempotency_key: str | None) -> str:
    """A fresh id, or the one ``caller``'s ``idempotency_key`` always maps to."""
    if idempotency_key is None:
        return uuid.uuid4().hex
    return uuid.uuid5(_ID_NAMESPACE, f"{caller}\n{idempotency_key}").hex


@dataclass(frozen=True, slots=True)
class InvocationRecord:
    """One async invocation as the caller's sidecars keep it."""

    id: str
    caller: str
    callee: str
    method: str
    verb: str
    status: Status = Status.PENDING
    created: float = field(default_factory=time.time)
    finished: float | None = None
    attempts: int = 0
    callback: str | None = None
    callback_done: bool = False
    key: str | None = None
    response: Reply | None = None

    @property
    def final(self) -> bool:
        """True once the invocation completed, failed or was cancelled."""
        return self.status is not Status.PENDING

    def summary(self) -> dict[str, Any]:
        """The record as a list shows it (no response)."""
        return {
            "id": self.id,
            "callee": self.callee,
            "method": self.method,
            "verb": self.verb,
            "status": self.status.value,
            "created": _iso(self.created),
            "finished": None if self.finished is None else _iso(self.finished),
            "attempts": self.attempts,
        }

    def encode(self) -> bytes:
        """The record as stored (see the module docstring)."""
        response = None
        if self.response is not None:
            response = {
                "status": self.response.status,
                "headers": self.response.headers.items(),
                "body": base64.b64encode(self.response.body).decode("ascii"),
            }
        return orjson.dumps(
            {
                "id": self.id,
                "caller": self.caller,
                "callee": self.callee,
                "method": self.method,
                "verb": self.verb,
                "status": self.status.value,
                "created": self.created,
                "finished": self.finished,
                "attempts": self.attempts,
                "callback": self.callback,
                "callbackDone": self.callback_done,
                "key": self.key,
                "response": response,
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> InvocationRecord:
        """Read a stored record; InvalidArgument if it is not one."""
        try:
            raw = orjson.loads(data)
            return cls(
                id=raw["id"],
                caller=raw["caller"],
                callee=raw["callee"],
                method=raw["method"],
                verb=raw["verb"],
                status=Status(raw["status"]),
                created=float(raw["created"]),
                finished=None if raw.get("finished") is None else float(raw["finished"]),
                attempts=int(raw.get("attempts") or 0),
                callback=raw.get("callback"),
                callback_done=bool(raw.get("callbackDone")),
                key=raw.get("key"),
                response=_reply(raw.get("response")),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise InvalidArgument(f"not an invocation record: {exc}") from None


def _reply(raw: Mapping[str, Any] | None) -> Reply | None:
    if raw is None:
        return None
    headers = Headers((str(k), str(v)) for k, v in raw["headers"])
    return Reply(int(raw["status"]), headers, base64.b64decode(raw["body"]))


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{int(epoch % 1 * 1000):03d}Z"


Change = Callable[[InvocationRecord], InvocationRecord | None]


class Results:
    """Typed access to the records, attempts and replies of async invocations."""

    def __init__(self, store: ResultStore, ttl: float = DEFAULT_TTL) -> None:
        if ttl <= 0:
            raise InvalidArgument("the invocation results TTL must be positive")
        self.store = store
        self.ttl = ttl

    async def create(self, record: InvocationRecord) -> tuple[InvocationRecord, bool]:
        """Save a new record: ``(record, True)``; or ``(existing, False)`` if its id is taken."""
        key = RECORD_PREFIX + f"{record.caller}||{record.id}"
        for _ in range(_CAS_ROUNDS):
            try:
                await self.store.put(key, record.encode(), ttl=self.ttl, create=True)
                return record, True
            except ResultConflict:
                existing = await self.get(record.caller, record.id)
                if existing is not None:
                    return existing, False
        raise ResultConflict(f"invocation {record.id} could not be created")

    async def get(
        self, caller: str, invocation: str, *, attempts: bool = True
    ) -> InvocationRecord | None:
        """The record of ``caller``'s invocation; while pending, with the attempts failed so far
        (one more read, skipped with ``attempts=False``)."""
        stored = await self.store.get(RECORD_PREFIX + f"{caller}||{invocation}")
        if stored is None:
            return None
        record = InvocationRecord.decode(stored.value)
        if attempts and record.status is Status.PENDING:
            record = replace(record, attempts=max(record.attempts, await self.attempts(record.id)))
        return record

    async def update(self, caller: str, invocation: str, change: Change) -> InvocationRecord | None:
        """Apply ``change`` atomically (compare-and-set); it returns None to leave the record be.

        Returns the record as it is afterwards; None if there is no record.
        """
        key = RECORD_PREFIX + f"{caller}||{invocation}"
        for _ in range(_CAS_ROUNDS):
            stored = await self.store.get(key)
            if stored is None:
                return None
            current = InvocationRecord.decode(stored.value)
            changed = change(current)
            if changed is None:
                return current
            try:
                await self.store.put(key, changed.encode(), ttl=self.ttl, etag=stored.etag)
                return changed
            except ResultConflict:
                continue
        raise ResultConflict(f"invocation {invocation} changed too often to be updated")

    async def delete(self, caller: str, invocation: str) -> None:
        """Forget a record (a submission that never reached the bus)."""
        await self.store.delete(RECORD_PREFIX + f"{caller}||{invocation}")

    async def list(self, caller: str) -> list[InvocationRecord]:
        """Every live record of ``caller``'s invocations, oldest first."""
        records = []
        for value in await self.store.list(RECORD_PREFIX + f"{caller}||"):
            try:
                records.append(InvocationRecord.decode(value))
            except InvalidArgument:
                continue  # not ours to interpret; listing the rest is more useful than failing
        return sorted(records, key=lambda r: r.created)

    async def attempts(self, invocation: str) -> int:
        """How many attempts of ``invocation`` failed so far (as the callee noted them)."""
        stored = await self.store.get(ATTEMPTS_PREFIX + invocation)
        try:
            return 0 if stored is None else int(stored.value)
        except ValueError:
            return 0

    async def note_failed_attempt(self, invocation: str, attempt: int) -> None:
        """Record that attempt number ``attempt`` of ``invocation`` failed."""
        await self.store.put(ATTEMPTS_PREFIX + invocation, str(attempt).encode(), ttl=self.ttl)

    def replies(self, callee: str) -> DoneReplies:
        """The bus's Replies record of ``callee``'s async server (namespace "done")."""
        return DoneReplies(self.store, DONE_PREFIX + f"{callee}||", self.ttl)


class DoneReplies:
    """:class:`bus.rpc.Replies` in the result store: durable, shared by every replica."""

    def __init__(self, store: ResultStore, prefix: str, ttl: float) -> None:
        self._store = store
        self._prefix = prefix
        self._ttl = ttl

    async def recorded(self, key: str) -> Message | None:
        """The reply recorded under ``key``, if any."""
        stored = await self._store.get(self._prefix + key)
        if stored is None:
            return None
        try:
            raw = orjson.loads(stored.value)
            return Message(
                data=base64.b64decode(raw["data"]),
                metadata={str(k): str(v) for k, v in raw["metadata"].items()},
                correlation_id=raw.get("correlationId"),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None  # unreadable: run the request again rather than answer garbage

    async def record(self, key: str, reply: Message) -> None:
        """Record ``reply`` under ``key``."""
        value = orjson.dumps(
            {
                "data": base64.b64encode(reply.data).decode("ascii"),
                "metadata": dict(reply.metadata),
                "correlationId": reply.correlation_id,
            }
        )
        await self._store.put(self._prefix + key, value, ttl=self._ttl)
