"""The Lua scripts of ``state.redis`` and the shape of its outbox entries (see :mod:`state.redis`).

Every command that checks and writes in one step is here: the save and delete scripts (Dapr's,
with the TTL and the outbox entry folded in), the relay's claim and release.  The outbox entry's
fields are written by the scripts (``XADD``) and by transactions (:func:`outbox_fields`, queued in
MULTI/EXEC) alike, and read back by :func:`recorded`.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from state.store import Journal, RecordedChange

OUTBOX_KEY = "omnibus:outbox:{store}"
LEASE_KEY = "omnibus:outbox-relay:{store}"

# KEYS[1] key; ARGV[1] expected etag ("" = none); ARGV[2] data; ARGV[3] "1" = first-write;
# ARGV[4] TTL seconds (<= 0: no expiry).  Recorded: KEYS[2] the outbox stream; ARGV[5] event id,
# ARGV[6] app id, ARGV[7] app key, ARGV[8] time.
_SET_SOURCE = """
local version = redis.pcall("HGET", KEYS[1], "version")
if type(version) == "table" then
  redis.call("DEL", KEYS[1])
  version = false
end
if ARGV[1] ~= "" then
  if version ~= ARGV[1] then return redis.error_reply("ETAG_MISMATCH") end
elseif ARGV[3] == "1" and version then
  return redis.error_reply("ETAG_MISMATCH")
end
redis.call("HSET", KEYS[1], "data", ARGV[2])
if ARGV[3] == "1" then redis.call("HSET", KEYS[1], "first-write", 0) end
local new = redis.call("HINCRBY", KEYS[1], "version", 1)
local ttl = tonumber(ARGV[4])
if ttl > 0 then redis.call("EXPIRE", KEYS[1], ttl) else redis.call("PERSIST", KEYS[1]) end
if KEYS[2] then
  redis.call("XADD", KEYS[2], "*", "id", ARGV[5], "op", "upsert", "key", ARGV[7], "app", ARGV[6],
    "etag", new, "value", ARGV[2], "time", ARGV[8])
end
return new
"""

# KEYS[1] key; ARGV[1] expected etag ("" = none).  Recorded: KEYS[2] the outbox stream;
# ARGV[2] event id, ARGV[3] app id, ARGV[4] app key, ARGV[5] time.
_DELETE_SOURCE = """
if ARGV[1] ~= "" then
  local version = redis.pcall("HGET", KEYS[1], "version")
  if version ~= ARGV[1] then return redis.error_reply("ETAG_MISMATCH") end
end
local removed = redis.call("DEL", KEYS[1])
if KEYS[2] then
  redis.call("XADD", KEYS[2], "*", "id", ARGV[2], "op", "delete", "key", ARGV[4], "app", ARGV[3],
    "time", ARGV[5])
end
return removed
"""

# KEYS[1] the lease, KEYS[2] the outbox stream; ARGV[1] relay id, ARGV[2] lease ms, ARGV[3] limit.
# Nil while another relay holds the lease, else the oldest entries.
_CLAIM_SOURCE = """
local holder = redis.call("GET", KEYS[1])
if holder and holder ~= ARGV[1] then return false end
redis.call("SET", KEYS[1], ARGV[1], "PX", ARGV[2])
return redis.call("XRANGE", KEYS[2], "-", "+", "COUNT", ARGV[3])
"""

# KEYS[1] the lease; ARGV[1] relay id.
_RELEASE_SOURCE = """
if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) end
return 0
"""


@dataclass(frozen=True, slots=True)
class Script:
    """A Lua script and the SHA1 that EVALSHA names it by."""

    source: str
    sha: str

    @classmethod
    def of(cls, source: str) -> Script:
        return cls(source, hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest())


SET = Script.of(_SET_SOURCE)
DELETE = Script.of(_DELETE_SOURCE)
CLAIM = Script.of(_CLAIM_SOURCE)
RELEASE = Script.of(_RELEASE_SOURCE)
Call = tuple[Script, Sequence[str], Sequence[Any]]  # a script, its keys, its arguments


def journal_args(journal: Journal) -> list[Any]:
    """The scripts' last arguments for a recorded change: event id, app id, app key, time."""
    return [journal.event_id, journal.app_id, journal.key, _now()]


def outbox_fields(journal: Journal, etag: int | None, value: bytes | None) -> dict[str, Any]:
    """An outbox entry's fields as the scripts XADD them (``etag``, ``value``: upserts)."""
    fields: dict[str, Any] = {"id": journal.event_id}
    if value is None:
        fields |= {"op": "delete", "key": journal.key, "app": journal.app_id}
    else:
        fields |= {"op": "upsert", "key": journal.key, "app": journal.app_id}
        fields |= {"etag": str(etag), "value": value}
    return {**fields, "time": _now()}


def recorded(entry: Any) -> RecordedChange:
    """A record from an XRANGE entry ``[id, [field, value, ...]]``."""
    position, flat = entry
    fields = dict(zip(flat[::2], flat[1::2], strict=True))
    etag = fields.get(b"etag")
    return RecordedChange(
        position.decode(),
        fields[b"id"].decode(),
        fields[b"op"].decode(),
        fields[b"key"].decode(),
        fields[b"app"].decode(),
        None if etag is None else etag.decode(),
        fields.get(b"value"),
        datetime.fromtimestamp(float(fields[b"time"]), UTC),
    )


def _now() -> str:
    """The time of a recorded change, as the outbox entries carry it (epoch seconds)."""
    return f"{time.time():.6f}"
