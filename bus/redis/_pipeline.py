"""Pipelining the commands of concurrent callers of the Redis broker."""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis

from bus.errors import BrokerClosed, PublishError
from bus.redis._wire import translate

_Batch = list[tuple[list[tuple[Any, ...]], asyncio.Future[list[Any]]]]


class Pipeliner:
    """Sends the commands of concurrent callers as one pipeline; each caller gets its replies.

    Commands queued while pipelines are in flight go out together in the next one; up to
    ``MAX_IN_FLIGHT`` pipelines overlap, so packing one overlaps Redis answering another.
    """

    MAX_IN_FLIGHT = 4

    def __init__(self, client: Redis, timeout: float) -> None:
        self._client = client
        self._timeout = timeout
        self._queue: _Batch = []
        self._in_flight: set[asyncio.Task[None]] = set()

    async def run(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Queue ``commands``; returns their replies once Redis answered them all."""
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._queue.append((commands, future))
        if len(self._queue) == 1:  # the first of this tick: send once the others have queued
            asyncio.get_running_loop().call_soon(self._kick)
        return await future

    def _kick(self) -> None:
        if not self._queue or len(self._in_flight) >= self.MAX_IN_FLIGHT:
            return
        batch, self._queue = self._queue, []
        task = asyncio.create_task(self._send(batch), name="redis-pipeline")
        self._in_flight.add(task)
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._kick()

    async def _send(self, batch: _Batch) -> None:
        pipe = self._client.pipeline(transaction=False)
        for commands, _ in batch:
            for args in commands:
                pipe.execute_command(*args)
        try:
            async with asyncio.timeout(self._timeout):
                replies = await pipe.execute(raise_on_error=False)
        except BaseException as exc:
            error = (
                translate(exc, "sending a pipeline")
                if isinstance(exc, Exception)
                else BrokerClosed("the broker was closed during a publish")
            )
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            if not isinstance(exc, Exception):
                raise
            return
        self._settle(batch, replies)

    @staticmethod
    def _settle(batch: _Batch, replies: list[Any]) -> None:
        start = 0
        for commands, future in batch:
            mine = replies[start : start + len(commands)]
            start += len(commands)
            if future.done():
                continue
            failure = next((r for r in mine if isinstance(r, Exception)), None)
            if failure is not None:
                future.set_exception(PublishError(f"Redis refused a write: {failure}"))
            else:
                future.set_result(mine)

    def close(self) -> None:
        """Fail whatever is queued or in flight (the broker is closing)."""
        for task in list(self._in_flight):
            task.cancel()
        for _, future in self._queue:
            if not future.done():
                future.set_exception(BrokerClosed("the broker was closed during a publish"))
        self._queue = []
