"""Async invocation end to end in one process: MemoryBroker, the in-memory state store, and an
app that is a real in-memory AppCaller with a script of answers."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from bus.envelope import Headers
from bus.memory import MemoryBroker, MemoryHub
from bus.message import Message
from bus.options import RetryPolicy
from invoke.async_client import AsyncClient, Submission, results_topic
from invoke.async_server import AsyncPolicy, AsyncServer, retry_after
from invoke.call import Call, Reply, async_topic
from invoke.errors import AppUnreachable
from invoke.results import InvocationRecord, Results, Status
from runtime.async_invocations import StateResultStore
from state import MemoryStore
from tests.helpers import eventually

QUICK = RetryPolicy(max_attempts=4, initial_interval=0.01, max_interval=0.02, jitter=0.0)


@dataclass
class ScriptedApp:
    """An app answering each call with the next status of its script (then the last one)."""

    statuses: list[int] = field(default_factory=lambda: [200])
    calls: list[Call] = field(default_factory=list)
    unreachable: bool = False

    async def __call__(self, call: Call, timeout: float) -> Reply:
        self.calls.append(call)
        if self.unreachable:
            raise AppUnreachable("connection refused")
        status = self.statuses[min(len(self.calls), len(self.statuses)) - 1]
        headers = Headers([("content-type", "text/plain"), ("x-app", "yes"), ("x-app", "twice")])
        return Reply(status, headers, f"answer {len(self.calls)}".encode())

    def ids(self) -> list[str | None]:
        return [c.headers.get("dapr-invocation-id") for c in self.calls]

    def attempts(self) -> list[str | None]:
        return [c.headers.get("dapr-invocation-attempt") for c in self.calls]


@dataclass
class World:
    broker: MemoryBroker
    results: Results
    client: AsyncClient
    servers: list[AsyncServer] = field(default_factory=list)

    async def serve(self, app: ScriptedApp, app_id: str = "callee") -> AsyncServer:
        policy = AsyncPolicy(retry=QUICK, timeout=2.0)
        server = AsyncServer(self.broker, app_id, app, self.results, policy)
        await server.start()
        self.servers.append(server)
        return server

    async def submit(self, key: str | None = None, callback: str | None = None) -> str:
        call = Call("callee", "orders/1", "POST", "q=1", Headers([("a", "b")]), b"{}", "caller")
        record, created = await self.client.submit(Submission(call, key, callback))
        assert created
        return record.id

    async def finished(self, iid: str) -> InvocationRecord:
        async def final() -> bool:
            record = await self.client.get(iid)
            return record is not None and record.final

        await eventually(final)
        record = await self.client.get(iid)
        assert record is not None
        return record


async def drained(broker: MemoryBroker, topic: str) -> bool:
    """Every group acked every message of ``topic``."""
    return not await broker.browse(topic)


@pytest.fixture
async def world() -> AsyncIterator[World]:
    broker = MemoryBroker(MemoryHub())
    await broker.connect()
    results = Results(StateResultStore(MemoryStore("results")), ttl=60)
    client = AsyncClient(broker, "caller", results)
    await client.start()
    made = World(broker, results, client)
    try:
        yield made
    finally:
        for server in made.servers:
            await server.stop()
        await client.stop()
        await broker.close()


async def test_a_callee_that_starts_after_the_submission_completes_it(world: World) -> None:
    # Given a submission while nobody serves the callee
    iid = await world.submit()
    pending = await world.client.get(iid)
    assert pending is not None and pending.status is Status.PENDING
    # When the callee comes up
    app = ScriptedApp()
    await world.serve(app)
    # Then the result is recorded verbatim, and the app saw the caller's request
    record = await world.finished(iid)
    assert record.status is Status.COMPLETED
    assert record.response is not None
    assert record.response.status == 200
    assert record.response.body == b"answer 1"
    assert record.response.headers.get_all("x-app") == ["yes", "twice"]
    assert record.attempts == 1
    (call,) = app.calls
    assert (call.method, call.verb, call.query, call.body) == ("orders/1", "POST", "q=1", b"{}")
    assert call.headers.get("a") == "b"
    assert app.ids() == [iid] and app.attempts() == ["1"]


async def test_503_twice_is_retried_and_the_third_answer_recorded(world: World) -> None:
    app = ScriptedApp([503, 503, 201])
    await world.serve(app)
    iid = await world.submit()
    record = await world.finished(iid)
    assert record.status is Status.COMPLETED
    assert record.response is not None and record.response.status == 201
    assert record.attempts == 3
    assert app.ids() == [iid] * 3
    assert app.attempts() == ["1", "2", "3"]


async def test_pending_shows_the_attempts_that_failed(world: World) -> None:
    iid = await world.submit()
    app = ScriptedApp([503])
    slow = AsyncPolicy(
        retry=RetryPolicy(max_attempts=5, initial_interval=30, jitter=0.0), timeout=2.0
    )
    server = AsyncServer(world.broker, "callee", app, world.results, slow)
    await server.start()
    world.servers.append(server)

    async def failed_once() -> bool:
        record = await world.client.get(iid)
        return record is not None and record.attempts == 1

    await eventually(failed_once)
    record = await world.client.get(iid)
    assert record is not None and record.status is Status.PENDING


async def test_after_its_attempts_it_fails_with_the_last_response_and_is_dead_lettered(
    world: World,
) -> None:
    app = ScriptedApp([500, 502, 503, 503])
    await world.serve(app)
    iid = await world.submit()
    record = await world.finished(iid)
    assert record.status is Status.FAILED
    assert record.response is not None
    assert record.response.status == 503
    assert record.response.body == b"answer 4"
    assert len(app.calls) == QUICK.max_attempts
    dead = await world.broker.browse(async_topic("callee") + ".deadletter")
    assert [m.id for m in dead] == [iid]


async def test_a_request_answered_before_is_answered_from_the_record(world: World) -> None:
    app = ScriptedApp()
    await world.serve(app)
    iid = await world.submit()
    await world.finished(iid)
    # The same request once more (a redelivery after a crash, a replay): the app is not called.
    call = Call("callee", "orders/1", "POST", "", Headers(), b"", "caller", invocation_id=iid)
    await world.broker.submit(
        async_topic("callee"),
        Message(call.to_envelope().encode(), id=iid),
        reply_to=results_topic("caller"),
        idempotency_key=iid,
    )
    await eventually(lambda: drained(world.broker, async_topic("callee")))
    await eventually(lambda: drained(world.broker, results_topic("caller")))
    assert len(app.calls) == 1


async def test_an_unreachable_app_fails_with_dapr_error_body(world: World) -> None:
    await world.serve(ScriptedApp(unreachable=True))
    record = await world.finished(await world.submit())
    assert record.status is Status.FAILED
    assert record.response is not None and record.response.status == 500
    assert b"ERR_DIRECT_INVOKE" in record.response.body
    assert b"connection refused" in record.response.body


async def test_an_idempotency_key_returns_the_same_invocation_without_resubmitting(
    world: World,
) -> None:
    iid = await world.submit(key="order-17")
    call = Call("callee", "orders/1", "POST", "", Headers(), b"", "caller")
    again, created = await world.client.submit(Submission(call, "order-17"))
    assert (again.id, created) == (iid, False)
    other, created = await world.client.submit(Submission(call, "order-18"))
    assert created and other.id != iid
    held = await world.broker.browse(async_topic("callee"))
    assert sorted(m.id for m in held) == sorted([iid, other.id])


async def test_a_cancelled_invocation_is_not_run_and_stays_cancelled(world: World) -> None:
    iid = await world.submit()
    cancelled = await world.client.cancel(iid)
    assert cancelled is not None and cancelled.status is Status.CANCELLED
    app = ScriptedApp()
    await world.serve(app)
    await eventually(lambda: drained(world.broker, async_topic("callee")))
    assert app.calls == []
    record = await world.client.get(iid)
    assert record is not None and record.status is Status.CANCELLED
    assert await world.client.cancel("0" * 32) is None


async def test_a_late_result_of_a_cancelled_invocation_is_discarded(world: World) -> None:
    app = ScriptedApp()
    iid = await world.submit()
    # The callee cannot see the caller's store: it runs the call anyway.
    other = Results(StateResultStore(MemoryStore("elsewhere")), ttl=60)
    server = AsyncServer(world.broker, "callee", app, other, AsyncPolicy(retry=QUICK))
    await world.client.cancel(iid)
    await server.start()
    world.servers.append(server)
    await eventually(lambda: app.calls)
    await eventually(lambda: drained(world.broker, results_topic("caller")))
    record = await world.client.get(iid)
    assert record is not None and record.status is Status.CANCELLED and record.response is None


@dataclass
class Callbacks:
    """The caller app's callback route: fails ``failures`` times, then answers 200."""

    failures: int = 1
    calls: list[Call] = field(default_factory=list)

    async def __call__(self, call: Call, timeout: float) -> Reply:
        self.calls.append(call)
        return Reply(500 if len(self.calls) <= self.failures else 200)


async def test_the_callback_is_retried_until_the_app_takes_it(world: World) -> None:
    callbacks = Callbacks(failures=2)
    world.client.app_caller = callbacks
    await world.serve(ScriptedApp([404]))
    iid = await world.submit(callback="/done")
    await eventually(lambda: len(callbacks.calls) == 3)
    call = callbacks.calls[-1]
    assert (call.app_id, call.method, call.verb) == ("caller", "done", "POST")
    assert call.headers.get("dapr-invocation-id") == iid
    assert call.headers.get("dapr-invocation-status") == "completed"
    assert call.headers.get("dapr-invocation-http-status") == "404"
    assert call.headers.get("content-type") == "text/plain"
    assert call.body == b"answer 1"

    async def noted() -> bool:
        record = await world.client.get(iid)
        return record is not None and record.callback_done

    await eventually(noted)
    # A redelivered reply does not call back again once the app took it.
    reply = await world.results.replies("callee").recorded(iid)
    assert reply is not None
    await world.client.on_reply(reply.__class__(reply.data, reply.metadata, id=iid))
    assert len(callbacks.calls) == 3


async def test_a_callback_waits_for_the_app_channel(world: World) -> None:
    await world.serve(ScriptedApp())
    iid = await world.submit(callback="done")
    await world.finished(iid)
    callbacks = Callbacks(failures=0)
    world.client.app_caller = callbacks
    await eventually(lambda: callbacks.calls)
    assert callbacks.calls[0].headers.get("dapr-invocation-id") == iid


def test_retry_after_reads_seconds_and_dates() -> None:
    assert retry_after("3") == 3.0
    assert retry_after(None) is None
    assert retry_after("soon") is None
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


async def test_retry_after_delays_the_next_attempt(world: World) -> None:
    @dataclass
    class Busy(ScriptedApp):
        async def __call__(self, call: Call, timeout: float) -> Reply:
            reply = await super().__call__(call, timeout)
            self.stamps.append(time.monotonic())
            if reply.status == 503:
                return Reply(503, Headers([("Retry-After", "1")]))
            return reply

        stamps: list[float] = field(default_factory=list)

    app = Busy([503, 200])
    await world.serve(app)
    record = await world.finished(await world.submit())
    assert record.status is Status.COMPLETED and record.attempts == 2
    assert app.stamps[1] - app.stamps[0] >= 1.0
