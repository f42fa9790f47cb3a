"""Reads of state.postgresql that wait together share one SELECT, without sharing failures."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from state import _postgres_reads
from state._postgres_reads import SharedReads
from state.postgresql import PostgresSettings, PostgresStore
from state.store import SetRequest


class _Table:
    """A fetch over a dict that records each call; a key "bad" fails the whole fetch."""

    def __init__(self, rows: dict[str, Any]) -> None:
        self.rows = rows
        self.fetches: list[list[str]] = []
        self.gate: asyncio.Event | None = None  # while set, fetches wait for it

    async def fetch(self, keys: list[str]) -> dict[str, Any]:
        self.fetches.append(keys)
        if self.gate is not None:
            await self.gate.wait()
        if "bad" in keys:
            raise ValueError("invalid byte sequence")
        return {k: self.rows[k] for k in keys if k in self.rows}


async def test_reads_of_one_loop_pass_share_one_fetch_of_their_keys() -> None:
    table = _Table({"a": 1, "b": 2})
    reads = SharedReads(table.fetch)
    found = await asyncio.gather(reads.read(["a"]), reads.read(["b", "a"]), reads.read(["c"]))
    assert table.fetches == [["a", "b", "c"]]
    assert [sorted(f.items()) for f in found] == [[("a", 1), ("b", 2)]] * 3


async def test_reads_that_come_while_fetches_are_out_wait_for_the_next_one() -> None:
    table = _Table({"k": 1})
    table.gate = asyncio.Event()
    reads = SharedReads(table.fetch)
    early = []
    for n in range(_postgres_reads.IN_FLIGHT):  # one a loop pass: each its own fetch
        early.append(asyncio.ensure_future(reads.read([f"e{n}"])))
        await asyncio.sleep(0.01)
    assert len(table.fetches) == _postgres_reads.IN_FLIGHT
    late = [asyncio.ensure_future(reads.read([f"l{n}"])) for n in range(5)]
    await asyncio.sleep(0.01)
    assert len(table.fetches) == _postgres_reads.IN_FLIGHT  # the late ones wait
    table.gate.set()
    await asyncio.gather(*early, *late)
    assert table.fetches[-1] == [f"l{n}" for n in range(5)]  # together, in one fetch


async def test_a_failed_shared_fetch_is_run_again_per_read() -> None:
    table = _Table({"a": 1})
    reads = SharedReads(table.fetch)
    good, bad = reads.read(["a"]), reads.read(["bad"])
    results = await asyncio.gather(good, bad, return_exceptions=True)
    assert results[0] == {"a": 1}
    assert isinstance(results[1], ValueError)
    assert table.fetches == [["a", "bad"], ["a"], ["bad"]]


async def test_a_cancelled_read_leaves_the_others_theirs() -> None:
    table = _Table({"a": 1})
    table.gate = asyncio.Event()
    reads = SharedReads(table.fetch)
    gone = asyncio.ensure_future(reads.read(["a"]))
    kept = asyncio.ensure_future(reads.read(["a"]))
    await asyncio.sleep(0.01)
    gone.cancel()
    table.gate.set()
    assert await kept == {"a": 1}
    with pytest.raises(asyncio.CancelledError):
        await gone


@pytest.fixture
async def store(postgres_tables: PostgresSettings) -> AsyncIterator[PostgresStore]:
    async with PostgresStore("shared-reads", postgres_tables) as store:
        yield store


async def test_concurrent_gets_of_the_store_get_each_their_own_key(
    store: PostgresStore, prefix: str
) -> None:
    for n in range(20):
        await store.set(SetRequest(f"{prefix}{n}", f'"v{n}"'.encode()))
    items = await asyncio.gather(*(store.get(f"{prefix}{n % 25}") for n in range(100)))
    for n, item in enumerate(items):
        if n % 25 < 20:
            assert item is not None and item.value == f'"v{n % 25}"'.encode()
        else:
            assert item is None
