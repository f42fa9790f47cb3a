"""A database thread: one thread that runs a SQLite connection's calls in order (the SQLite
broker's and the ``state.sqlite`` store's).

A lighter ``ThreadPoolExecutor(1)`` + ``run_in_executor``: a call is queued with its asyncio
future, and the thread hands the result back with one ``call_soon_threadsafe``, without the
concurrent future, the future chaining and the idle semaphore of the executor (a few percent of
a sidecar's CPU at a thousand calls a second).
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_Call = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[..., Any], tuple[Any, ...]]


class DatabaseThread:
    """Runs calls one at a time, in submission order, on a dedicated daemon thread."""

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Queue ``fn(*args)``; the future (of the running loop) gets its result or exception.

        Cancelling the future before the call started skips the call, as with an executor.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._calls.put((loop, future, fn, args))
        return future

    def stop(self) -> None:
        """Let the thread finish the calls already queued, then end."""
        self._calls.put(None)

    def _run(self) -> None:
        while True:
            call = self._calls.get()
            if call is None:
                return
            loop, future, fn, args = call
            if future.cancelled():
                continue
            try:
                result = fn(*args)
            except BaseException as exc:  # handed to the caller, like an executor does
                if isinstance(exc, StopIteration):  # a future cannot hold StopIteration
                    exc = RuntimeError(f"{fn!r} raised StopIteration")
                _hand_back(loop, _fail, future, exc)
            else:
                _hand_back(loop, _succeed, future, result)


def _hand_back(
    loop: asyncio.AbstractEventLoop,
    settle: Callable[[asyncio.Future[Any], Any], None],
    future: asyncio.Future[Any],
    value: Any,
) -> None:
    try:
        loop.call_soon_threadsafe(settle, future, value)
    except RuntimeError:  # the loop is closed: nobody waits any more
        pass


def _succeed(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
