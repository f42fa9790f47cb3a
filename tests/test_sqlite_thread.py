"""The SQLite broker's database thread: order, results, errors, cancellation, stop."""

from __future__ import annotations

import asyncio
import threading

import pytest

from bus.dbthread import DatabaseThread


async def test_calls_run_in_order_on_one_thread_and_return_their_results() -> None:
    worker = DatabaseThread("test-db")
    seen: list[tuple[int, str]] = []

    def record(n: int) -> int:
        seen.append((n, threading.current_thread().name))
        return n * 2

    try:
        results = await asyncio.gather(*(worker.submit(record, n) for n in range(20)))
    finally:
        worker.stop()
    assert results == [n * 2 for n in range(20)]
    assert [n for n, _ in seen] == list(range(20))
    assert {name for _, name in seen} == {"test-db"}


async def test_an_exception_reaches_the_caller_and_the_thread_goes_on() -> None:
    worker = DatabaseThread("test-db")

    def fail() -> None:
        raise ValueError("boom")

    def stop_iteration() -> None:
        raise StopIteration

    try:
        with pytest.raises(ValueError, match="boom"):
            await worker.submit(fail)
        with pytest.raises(RuntimeError, match="StopIteration"):
            await worker.submit(stop_iteration)
        assert await worker.submit(int, "7") == 7
    finally:
        worker.stop()


async def test_a_call_cancelled_before_it_started_is_skipped() -> None:
    worker = DatabaseThread("test-db")
    gate = threading.Event()
    ran: list[str] = []
    try:
        blocker = worker.submit(gate.wait, 5.0)
        skipped = worker.submit(ran.append, "skipped")
        skipped.cancel()
        gate.set()
        assert await blocker is True
        await worker.submit(ran.append, "after")
    finally:
        worker.stop()
    assert ran == ["after"]


async def test_stop_lets_queued_calls_finish() -> None:
    worker = DatabaseThread("test-db")
    pending = [worker.submit(pow, 2, n) for n in range(5)]
    worker.stop()
    assert await asyncio.gather(*pending) == [1, 2, 4, 8, 16]
