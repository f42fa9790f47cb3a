"""The Invoker and the InvocationServer over an in-memory bus: local calls, remote calls, errors,
time-outs, retries with Dapr's matching rules, and the circuit breaker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace

import pytest

from bus.envelope import Headers
from bus.memory import MemoryBroker, MemoryHub
from bus.options import RetryPolicy
from invoke import AppUnreachable, Call, InvokeError, Reply
from invoke.client import InvokePolicy, Invoker, RetryRule
from invoke.errors import CircuitOpen, InvokeTimeout, NoInstance

FAST = RetryPolicy(max_attempts=4, initial_interval=0.001, max_interval=0.001, jitter=0.0)


@dataclass
class ScriptedApp:
    """Answers each call with the next status of its script (the last one repeats)."""

    script: list[int | str] = field(default_factory=lambda: [200])
    calls: int = 0

    async def __call__(self, call: Call, timeout: float) -> Reply:
        step = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        if step == "down":
            raise AppUnreachable("connection refused")
        if step == "slow":
            await asyncio.sleep(10)
        assert isinstance(step, int)
        return Reply(step, Headers([("X-Call", str(self.calls))]), call.body)


@dataclass
class CountingBreaker:
    """Opens after ``threshold`` consecutive failures (a stand-in with the breaker's shape)."""

    threshold: int = 2
    failures: int = 0
    outcomes: list[bool] = field(default_factory=list)

    def allow(self) -> bool:
        return self.failures < self.threshold

    def record(self, success: bool) -> None:
        self.outcomes.append(success)
        self.failures = 0 if success else self.failures + 1


def _call(app_id: str = "orders", body: bytes = b"hi") -> Call:
    return Call(app_id, "m", "POST", "", Headers(), body, "checkout")


@pytest.fixture
async def brokers() -> AsyncIterator[tuple[MemoryBroker, MemoryBroker]]:
    hub = MemoryHub()
    pair = (MemoryBroker(hub), MemoryBroker(hub))
    for broker in pair:
        await broker.connect()
    yield pair
    for broker in pair:
        await broker.close()


async def _served(broker: MemoryBroker, app: ScriptedApp) -> Invoker:
    callee = Invoker(broker, "orders")
    await callee.serve(app)
    return callee


async def test_remote_call_gets_the_reply(brokers: tuple[MemoryBroker, MemoryBroker]) -> None:
    app = ScriptedApp([409])
    callee = await _served(brokers[1], app)
    reply = await Invoker(brokers[0], "checkout").invoke(_call(body=b"payload"))
    assert (reply.status, reply.body, reply.headers.get("x-call")) == (409, b"payload", "1")
    await callee.close()


async def test_app_unreachable_reaches_the_caller(
    brokers: tuple[MemoryBroker, MemoryBroker],
) -> None:
    callee = await _served(brokers[1], ScriptedApp(["down"]))
    with pytest.raises(AppUnreachable, match="failed to invoke, id: orders, err: connection"):
        await Invoker(brokers[0], "checkout").invoke(_call())
    await callee.close()


async def test_no_instance_once_the_server_stopped(
    brokers: tuple[MemoryBroker, MemoryBroker],
) -> None:
    callee = await _served(brokers[0], ScriptedApp())
    await callee.close()
    with pytest.raises(NoInstance, match="no running instance of app orders"):
        await Invoker(brokers[0], "checkout").invoke(_call())


async def test_time_out_is_an_invoke_error(brokers: tuple[MemoryBroker, MemoryBroker]) -> None:
    callee = await _served(brokers[1], ScriptedApp(["slow"]))
    with pytest.raises(InvokeTimeout, match="no reply within 0.2s"):
        await Invoker(brokers[0], "checkout").invoke(_call(), timeout=0.2)
    await callee.close()


async def test_own_app_id_is_called_directly() -> None:
    app = ScriptedApp([201])
    invoker = Invoker(None, "orders", local=app)
    assert (await invoker.invoke(_call())).status == 201
    with pytest.raises(NoInstance):
        await invoker.invoke(_call("elsewhere"))


async def test_without_a_policy_a_failure_is_not_retried() -> None:
    app = ScriptedApp([503, 200])
    reply = await Invoker(None, "orders", local=app).invoke(_call())
    assert (reply.status, app.calls) == (503, 1)


async def test_retries_failure_statuses_then_returns_the_success() -> None:
    app = ScriptedApp([503, 500, 200])
    policy = InvokePolicy(retry=RetryRule(FAST))
    invoker = Invoker(None, "orders", local=app, policies=lambda _: policy)
    reply = await invoker.invoke(_call())
    assert (reply.status, app.calls) == (200, 3)


async def test_the_last_failed_reply_is_returned_as_is() -> None:
    app = ScriptedApp([502])
    policy = InvokePolicy(retry=RetryRule(FAST))
    reply = await Invoker(None, "orders", local=app, policies=lambda _: policy).invoke(_call())
    assert (reply.status, reply.headers.get("x-call"), app.calls) == (502, "4", 4)


async def test_matching_restricts_retried_statuses() -> None:
    app = ScriptedApp([503, 409, 200])
    rule = RetryRule(FAST, http_statuses=frozenset({503}))
    invoker = Invoker(None, "orders", local=app, policies=lambda _: InvokePolicy(retry=rule))
    reply = await invoker.invoke(_call())
    assert (reply.status, app.calls) == (409, 2)


async def test_grpc_codes_filter_transport_failures() -> None:
    # 14 (Unavailable) is what an unreachable app maps to; 4 (DeadlineExceeded) is not it
    app = ScriptedApp(["down", 200])
    only_deadline = RetryRule(FAST, grpc_codes=frozenset({4}))
    invoker = Invoker(
        None, "orders", local=app, policies=lambda _: InvokePolicy(retry=only_deadline)
    )
    with pytest.raises(AppUnreachable):
        await invoker.invoke(_call())
    unavailable = RetryRule(FAST, grpc_codes=frozenset({14}))
    app.calls = 0
    invoker.policies = lambda _: InvokePolicy(retry=unavailable)
    assert (await invoker.invoke(_call())).status == 200


async def test_policy_timeout_bounds_each_attempt() -> None:
    app = ScriptedApp(["slow", 200])
    policy = InvokePolicy(timeout=0.05, retry=RetryRule(FAST))
    reply = await Invoker(None, "orders", local=app, policies=lambda _: policy).invoke(_call())
    assert (reply.status, app.calls) == (200, 2)


async def test_circuit_breaker_opens_and_refuses_calls() -> None:
    app = ScriptedApp([500])
    breaker = CountingBreaker(threshold=2)
    invoker = Invoker(None, "orders", local=app, policies=lambda _: InvokePolicy(breaker=breaker))
    for _ in range(2):
        assert (await invoker.invoke(_call())).status == 500
    with pytest.raises(CircuitOpen, match="circuit breaker is open"):
        await invoker.invoke(_call())
    assert app.calls == 2
    assert breaker.outcomes == [False, False]


async def test_retries_stop_at_an_open_circuit() -> None:
    app = ScriptedApp(["down"])
    policy = InvokePolicy(retry=RetryRule(FAST), breaker=CountingBreaker(threshold=2))
    invoker = Invoker(None, "orders", local=app, policies=lambda _: policy)
    with pytest.raises(CircuitOpen):
        await invoker.invoke(_call())
    assert app.calls == 2


async def test_redelivered_or_broken_replies_are_invoke_errors(
    brokers: tuple[MemoryBroker, MemoryBroker],
) -> None:
    from bus.message import Message
    from bus.options import SubscriptionOptions
    from invoke import call_topic

    async def garbage(request: Message) -> bytes:
        return b"\x00"  # not an envelope

    await brokers[1].serve(call_topic("orders"), garbage, SubscriptionOptions(group="orders"))
    with pytest.raises(InvokeError, match="failed to invoke, id: orders"):
        await Invoker(brokers[0], "checkout").invoke(_call())


async def test_the_policy_of_a_callee_in_another_namespace_is_its_qualified_id() -> None:
    asked: list[str] = []

    def policies(target: str) -> InvokePolicy:
        asked.append(target)
        return InvokePolicy()

    app = ScriptedApp([200])
    invoker = Invoker(None, "orders", local=app, policies=policies, namespace="prod")
    await invoker.invoke(replace(_call(), namespace="prod"))  # its own: a bare id
    for namespace in ("", "default", "staging"):  # no bus: other namespaces are out of reach
        with pytest.raises(NoInstance):
            await invoker.invoke(replace(_call(), namespace=namespace))
    assert asked == ["orders", "orders.default", "orders.default", "orders.staging"]
