"""The reads behind ``state.redis`` queries: every hash of Dapr's layout under a key prefix.

Keys come from ``SCAN MATCH <prefix>*`` (glob characters of the prefix escaped), and each SCAN
step's keys are read in one redis-py pipeline (HMGET ``data`` ``version`` and PEXPIRETIME): one
round trip per step of :data:`SCAN_COUNT` keys, never one per key.  redis-py, not the store's
pipelined link, so that large replies do not hold up the gets and saves behind them.  Keys that
vanished between the steps, hashes lacking either field, keys of other types (the change feed's
outbox stream, a plain string of an old Dapr version) and key names that are not UTF-8 are left
out.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from state.store import Item

SCAN_COUNT = 1000  # keys per SCAN step, and so per pipeline of reads
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


async def scan_items(client: aioredis.Redis, key_prefix: str) -> dict[str, Item]:
    """Every hash of the layout under ``key_prefix``, by key; redis-py's errors pass through."""
    match = _GLOB_SPECIAL.sub(r"\\\1", key_prefix) + "*"
    items: dict[str, Item] = {}
    cursor: int = 0
    while True:
        cursor, found = await client.scan(cursor, match=match, count=SCAN_COUNT)
        keys = [k for k in dict.fromkeys(_key_names(found)) if k not in items]
        items.update(await _read_hashes(client, keys))
        if cursor == 0:
            return items


async def _read_hashes(client: aioredis.Redis, keys: Sequence[str]) -> dict[str, Item]:
    """``data``, ``version`` and expiry of ``keys`` in one round trip."""
    if not keys:
        return {}
    async with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hmget(key, "data", "version")
            pipe.pexpiretime(key)
        replies = await pipe.execute(raise_on_error=False)
    items = {}
    for index, key in enumerate(keys):
        fields, expiry = replies[2 * index], replies[2 * index + 1]
        if isinstance(fields, ResponseError):  # another type: the outbox stream, a string
            continue
        if isinstance(fields, Exception):
            raise fields
        data, version = fields
        if data is not None and version is not None:
            items[key] = Item(key, data, version.decode(), expires_at(expiry))
    return items


def _key_names(raw: Sequence[bytes | str]) -> list[str]:
    """The keys of a SCAN reply as text; one that is not UTF-8 was not written by a sidecar."""
    names = []
    for key in raw:
        try:
            names.append(key if isinstance(key, str) else key.decode())
        except UnicodeDecodeError:
            continue
    return names


def expires_at(reply: Any) -> datetime | None:
    """A PEXPIRETIME reply as a time: the absolute expiry in ms; -1 = no expiry, -2 = no key."""
    if isinstance(reply, int) and reply > 0:
        return datetime.fromtimestamp(reply / 1000, UTC)
    return None
