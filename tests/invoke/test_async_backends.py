"""Async invocation on every bus backend: caller and callee on brokers of their own (as two
sidecars), one shared result store."""

from __future__ import annotations

import uuid

from bus.envelope import Headers
from bus.options import RetryPolicy
from invoke.async_client import AsyncClient, Submission
from invoke.async_server import AsyncPolicy, AsyncServer
from invoke.call import Call, Reply
from invoke.results import Results, Status
from runtime.async_invocations import StateResultStore
from state import MemoryStore
from tests.conftest import MakeBroker
from tests.helpers import eventually

QUICK = RetryPolicy(max_attempts=3, initial_interval=0.05, max_interval=0.1, jitter=0.0)


class FlakyApp:
    """Answers 503 to the first ``failures`` attempts of each invocation, then 200."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[Call] = []

    async def __call__(self, call: Call, timeout: float) -> Reply:
        self.calls.append(call)
        attempt = int(call.headers.get("dapr-invocation-attempt") or 0)
        status = 503 if attempt <= self.failures else 200
        return Reply(status, Headers([("content-type", "text/plain")]), f"try {attempt}".encode())


async def test_a_late_callee_fails_twice_then_the_result_is_recorded(
    make_broker: MakeBroker,
) -> None:
    callee, caller = f"callee-{uuid.uuid4().hex[:8]}", f"caller-{uuid.uuid4().hex[:8]}"
    results = Results(StateResultStore(MemoryStore("shared")), ttl=60)
    client = AsyncClient(await make_broker(), caller, results)
    await client.start()
    try:
        # Given submissions while the callee does not run, one of them cancelled
        call = Call(callee, "work", "POST", "", Headers(), b"{}", caller)
        done, _ = await client.submit(Submission(call))
        cancelled, _ = await client.submit(Submission(call))
        await client.cancel(cancelled.id)
        # When the callee starts and fails each invocation twice with 503
        app = FlakyApp(failures=2)
        policy = AsyncPolicy(retry=QUICK, timeout=5.0)
        server = AsyncServer(await make_broker(), callee, app, results, policy)
        await server.start()
        try:

            async def finished() -> bool:
                record = await client.get(done.id)
                return record is not None and record.final

            await eventually(finished, timeout=30)
        finally:
            await server.stop()
        # Then the third answer is recorded; the cancelled one never reached the app
        record = await client.get(done.id)
        assert record is not None and record.status is Status.COMPLETED
        assert record.response is not None and record.response.body == b"try 3"
        assert [c.headers.get("dapr-invocation-id") for c in app.calls] == [done.id] * 3
        skipped = await client.get(cancelled.id)
        assert skipped is not None and skipped.status is Status.CANCELLED
    finally:
        await client.stop()
