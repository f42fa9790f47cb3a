"""The HTTP load generator: several processes, each an asyncio client on keep-alive connections,
so the generator is not what limits the sidecar.

The client is the app channel's own :class:`~runtime.channel.http1.Http1Client` (one
``transport.write`` per request, httptools parsing): about a third of aiohttp's CPU per request,
so less of a two-core machine goes to the generator and its own share of each round trip is
small.  The one request shape the load needs: method, target, a body, fixed headers.

A :class:`LoadSpec` says where to send, single or bulk bodies, how many connections, and when to
stop (a duration, a message count, or both); with ``rate`` set, sends follow a fixed schedule
(open loop) instead of going as fast as responses come back.  Every worker reports its own CPU
seconds, so the run can show how much of the machine the generator itself used.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from types import TracebackType
from urllib.parse import urlsplit

from benchmarks.payload import ID_STRIDE, PayloadFactory
from runtime.channel.http1 import Http1Client, HttpFailure

_START_DELAY = 0.3  # seconds between handing out the work and the common start


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """One load phase; ``messages`` counts messages (bulk: entries), ``rate`` is messages/s."""

    url: str
    payload_size: int
    connections: int
    processes: int
    bulk_size: int = 0  # 0 = single publishes
    duration: float | None = None
    messages: int | None = None
    rate: float | None = None
    record_round_trips: bool = False
    # Instead of payloads: ``method`` with ``body`` (None: no body); with ``keys`` > 0, "{key}"
    # in the URL and the body cycles through k0 .. k<keys - 1> (the state scenario's keys).
    method: str = "POST"
    body: str | None = None
    keys: int = 0
    headers: tuple[tuple[str, str], ...] = ()  # sent with every request, beside Content-Type

    def share(self, total: int, index: int) -> int:
        """Worker ``index``'s part of ``total`` (connections or messages)."""
        return total // self.processes + (1 if index < total % self.processes else 0)


@dataclass(slots=True)
class WorkerResult:
    """What one generator process did."""

    messages: int = 0
    requests: int = 0
    errors: int = 0
    first_error: str = ""
    started: float = 0.0
    finished: float = 0.0
    cpu_seconds: float = 0.0
    round_trips_us: list[int] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class LoadResult:
    """The phase as a whole: every worker's results combined."""

    messages: int
    requests: int
    errors: int
    first_error: str
    started: float
    finished: float
    cpu_seconds: float
    round_trips_us: list[int]

    @property
    def elapsed(self) -> float:
        """Seconds from the first worker's start to the last one's end."""
        return max(self.finished - self.started, 1e-9)

    @property
    def rate(self) -> float:
        """Messages accepted per second."""
        return self.messages / self.elapsed

    @property
    def cores(self) -> float:
        """Cores the generator processes used on average."""
        return self.cpu_seconds / self.elapsed


class LoadGenerator:
    """A pool of generator processes, started once per run and reused by every phase."""

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self._pool = ProcessPoolExecutor(processes, mp_context=get_context("spawn"))

    def __enter__(self) -> LoadGenerator:
        # Start every process now (imports included), not inside the first measured phase.
        list(self._pool.map(_warm, [0.3] * self.processes))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    async def run(self, spec: LoadSpec) -> LoadResult:
        """Run ``spec`` on every process at once and combine the results."""
        if spec.processes != self.processes:
            raise ValueError("the spec must use the generator's process count")
        loop = asyncio.get_running_loop()
        start_at = time.monotonic() + _START_DELAY
        futures = [
            loop.run_in_executor(self._pool, _worker, spec, index, start_at)
            for index in range(spec.processes)
        ]
        return combine(await asyncio.gather(*futures))


def combine(results: list[WorkerResult]) -> LoadResult:
    """Sum the workers' counts; the phase spans the earliest start to the latest finish."""
    active = [r for r in results if r.requests or r.errors] or results
    return LoadResult(
        messages=sum(r.messages for r in results),
        requests=sum(r.requests for r in results),
        errors=sum(r.errors for r in results),
        first_error=next((r.first_error for r in results if r.first_error), ""),
        started=min(r.started for r in active),
        finished=max(r.finished for r in active),
        cpu_seconds=sum(r.cpu_seconds for r in results),
        round_trips_us=[x for r in results for x in r.round_trips_us],
    )


def _warm(seconds: float) -> None:
    import uvloop  # noqa: F401  (imported for its start-up cost, outside any measurement)

    time.sleep(seconds)


def _worker(spec: LoadSpec, index: int, start_at: float) -> WorkerResult:
    import uvloop

    return uvloop.run(_Worker(spec, index).run(start_at))


class _Worker:
    """One generator process: ``connections`` coroutines sharing one keep-alive client."""

    def __init__(self, spec: LoadSpec, index: int) -> None:
        self.spec = spec
        self.connections = max(spec.share(spec.connections, index), 1)
        per_request = spec.bulk_size or 1
        budget = None if spec.messages is None else spec.share(spec.messages, index)
        self.request_budget = None if budget is None else -(-budget // per_request)
        self.rate = None if spec.rate is None else spec.rate / spec.processes / per_request
        self.next_id = index * ID_STRIDE
        self.taken = 0
        self.factory = PayloadFactory(spec.payload_size)
        self.result = WorkerResult()
        self.stop_at: float | None = None
        self.target = "/"

    async def run(self, start_at: float) -> WorkerResult:
        url = urlsplit(self.spec.url)
        headers = {"Content-Type": "application/json", **dict(self.spec.headers)}
        host, port = url.hostname or "127.0.0.1", url.port or 80
        client = Http1Client(host, port, limit=self.connections, headers=headers)
        self.target = url.path + (f"?{url.query}" if url.query else "")
        try:
            await asyncio.sleep(max(start_at - time.monotonic(), 0))
            cpu = time.process_time()
            self.result.started = time.monotonic()
            self.stop_at = None if self.spec.duration is None else start_at + self.spec.duration
            await asyncio.gather(*(self._connection(client) for _ in range(self.connections)))
            self.result.finished = time.monotonic()
            self.result.cpu_seconds = time.process_time() - cpu
        finally:
            await client.close()
        return self.result

    def _take(self) -> int | None:
        """The sequence number of the next request, or None when the phase is over."""
        if self.request_budget is not None and self.taken >= self.request_budget:
            return None
        if self.stop_at is not None and time.monotonic() >= self.stop_at:
            return None
        self.taken += 1
        return self.taken - 1

    async def _connection(self, client: Http1Client) -> None:
        while (seq := self._take()) is not None:
            if self.rate is not None:
                delay = self.result.started + seq / self.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            await self._send(client)

    async def _send(self, client: Http1Client) -> None:
        count = self.spec.bulk_size or 1
        first, self.next_id = self.next_id, self.next_id + count
        sent = time.monotonic_ns()
        target, body = self._request(first, sent)
        try:
            status, _ = await client.request(self.spec.method, target, body)
        except (TimeoutError, HttpFailure, OSError) as exc:
            self._error(f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(0.01)  # a refused connection must not turn into a busy loop
            return
        if 200 <= status < 300:
            self.result.requests += 1
            self.result.messages += count
            if self.spec.record_round_trips:
                self.result.round_trips_us.append((time.monotonic_ns() - sent) // 1000)
        else:
            self._error(f"HTTP {status}")

    def _request(self, first: int, sent: int) -> tuple[str, bytes]:
        """The request target and body of request ``first``."""
        spec = self.spec
        if spec.keys:
            key = f"k{first % spec.keys}"
            body = b"" if spec.body is None else spec.body.replace("{key}", key).encode()
            return self.target.replace("{key}", key), body
        if spec.bulk_size:
            return self.target, self.factory.bulk(first, spec.bulk_size, sent)
        return self.target, self.factory.message(first, sent)

    def _error(self, text: str) -> None:
        self.result.errors += 1
        if not self.result.first_error:
            self.result.first_error = text
