"""Small helpers shared by tests: collecting handlers, waiting for conditions, the machine's
PostgreSQL."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

from bus.message import Message, Outcome

# The machine's PostgreSQL (trust auth); tests use tables of their own in database "test".
POSTGRES = "host=127.0.0.1 port=5432 user=postgres dbname=test"


def postgres_listens() -> bool:
    """Whether PostgreSQL listens on 127.0.0.1:5432."""
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


class Collector:
    """A handler that records deliveries and answers with a scripted outcome."""

    def __init__(
        self, outcome: Callable[[Message], Outcome] | None = None, delay: float = 0.0
    ) -> None:
        self.seen: list[Message] = []
        self._outcome = outcome or (lambda _: Outcome.SUCCESS)
        self._delay = delay
        self._changed = asyncio.Event()
        self.running = 0
        self.max_running = 0

    async def __call__(self, message: Message) -> Outcome:
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            if self._delay:
                await asyncio.sleep(self._delay)
            self.seen.append(message)
            self._changed.set()
            return self._outcome(message)
        finally:
            self.running -= 1

    @property
    def ids(self) -> list[str]:
        """Ids in delivery order."""
        return [m.id for m in self.seen]

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[Message]:
        """Wait until at least ``count`` deliveries were seen."""
        deadline = time.monotonic() + timeout
        while len(self.seen) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"saw {len(self.seen)} deliveries, expected {count}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                pass
        return self.seen


async def eventually(
    check: Callable[[], object], timeout: float = 10.0, interval: float = 0.05
) -> None:
    """Poll ``check`` (sync or async) until it returns truthy, else fail."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)
