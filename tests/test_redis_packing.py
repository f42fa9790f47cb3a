"""Commands packed by hiredis are byte for byte what redis-py's own packer sends."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio.connection import Connection
from redis.exceptions import DataError

from bus.redis._wire import PackedConnection

COMMANDS: list[tuple[Any, ...]] = [
    ("XADD", "orders", "*", "data", b"\x00\x01binary", "metadata", b'{"a":1}'),
    (b"XACK", b"orders", "group", b"1-0", b"2-0"),
    ("CONFIG GET", "maxmemory"),  # a two-word command name is split
    ("ZADD", "omnibus:retry:t:g", 1700000000000, b"1-0"),
    ("SET", "k", 2.5),
    ("XADD", "t", "*", "data", bytearray(b"from a bytearray")),  # redis-py's packer takes it
    ("XADD", "t", "*", "data", memoryview(b"a view")),
    ("SET", "k", "caf\u00e9"),
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: str(c[0]))
def test_packed_like_redis_py(command: tuple[Any, ...]) -> None:
    ours = b"".join(bytes(part) for part in PackedConnection().pack_command(*command))
    theirs = b"".join(bytes(part) for part in Connection().pack_command(*command))
    assert ours == theirs


@pytest.mark.parametrize("value", [True, None])
def test_values_redis_py_rejects_are_rejected(value: object) -> None:
    with pytest.raises(DataError):
        PackedConnection().pack_command("SET", "k", value)
