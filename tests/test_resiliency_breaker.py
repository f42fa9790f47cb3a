"""Circuit breakers of ``kind: Resiliency``: parsing, lookup and the breaker's states."""

from __future__ import annotations

from pathlib import Path

import pytest

from bus.errors import ConfigError
from components.loader import load_resources
from components.resiliency import (
    BreakerState,
    CircuitBreaker,
    app_breaker,
    inbound_breaker,
)
from components.specs import CircuitBreakerSpec, Resources

RESILIENCY = """\
apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata: {name: r}
spec:
  policies:
    circuitBreakers:
      pubsubCB: {maxRequests: 2, interval: 8s, timeout: 45s, trip: consecutiveFailures >= 3}
      appCB: {}
  targets:
    components:
      orders: {inbound: {circuitBreaker: pubsubCB}}
    apps:
      billing: {circuitBreaker: appCB}
"""


def load(tmp_path: Path, text: str) -> Resources:
    (tmp_path / "r.yaml").write_text(text)
    return load_resources([tmp_path], app_id="app", environ={})


def test_breakers_are_parsed_with_dapr_defaults(tmp_path: Path) -> None:
    resources = load(tmp_path, RESILIENCY)
    assert inbound_breaker(resources.resiliencies, "orders") == CircuitBreakerSpec(
        max_requests=2, interval=8.0, timeout=45.0, trip="consecutiveFailures >= 3"
    )
    assert inbound_breaker(resources.resiliencies, "other") is None
    assert app_breaker(resources.resiliencies, "billing") == CircuitBreakerSpec(
        max_requests=1, interval=0.0, timeout=60.0, trip="consecutiveFailures > 5"
    )
    assert app_breaker(resources.resiliencies, "other") is None


def test_reserved_default_breakers_apply(tmp_path: Path) -> None:
    text = RESILIENCY.replace("appCB: {}", "DefaultCircuitBreakerPolicy: {timeout: 5s}")
    text = text.replace("      billing: {circuitBreaker: appCB}\n", "      billing: {}\n")
    resources = load(tmp_path, text)
    assert inbound_breaker(resources.resiliencies, "other") == CircuitBreakerSpec(timeout=5.0)
    assert app_breaker(resources.resiliencies, "billing") == CircuitBreakerSpec(timeout=5.0)


@pytest.mark.parametrize(
    ("policy", "error"),
    [
        ("{trip: 'consecutiveFailures >'}", "trip: expected a CEL expression"),
        ("{maxRequests: 0}", "maxRequests"),
        ("{timeout: soon}", "timeout"),
        ("[1]", "circuitBreakers.pubsubCB"),
    ],
)
def test_bad_breakers_stop_start_up(tmp_path: Path, policy: str, error: str) -> None:
    text = RESILIENCY.replace(
        "{maxRequests: 2, interval: 8s, timeout: 45s, trip: consecutiveFailures >= 3}", policy
    )
    with pytest.raises(ConfigError, match=error):
        load(tmp_path, text)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_trips_after_the_trip_expression_then_half_opens_and_closes() -> None:
    clock = Clock()
    breaker = CircuitBreaker(
        CircuitBreakerSpec(max_requests=2, timeout=30.0, trip="consecutiveFailures >= 3"),
        clock=clock,
    )
    for _ in range(2):
        assert breaker.allow()
        breaker.record(False)
    assert breaker.allow()
    breaker.record(True)  # a success resets the consecutive failures
    for _ in range(3):
        assert breaker.state is BreakerState.CLOSED and breaker.allow()
        breaker.record(False)
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow()
    assert breaker.retry_after() == 30.0
    clock.now += 30.0
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.allow() and breaker.allow()
    assert not breaker.allow()  # maxRequests let through while half-open
    breaker.record(True)
    assert breaker.state is BreakerState.HALF_OPEN
    breaker.record(True)
    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow()


def test_a_failure_while_half_open_opens_again() -> None:
    clock = Clock()
    breaker = CircuitBreaker(
        CircuitBreakerSpec(timeout=10.0, trip="totalFailures > 0"), clock=clock
    )
    breaker.allow()
    breaker.record(False)
    assert breaker.state is BreakerState.OPEN
    clock.now += 10.0
    generation = breaker.generation
    assert breaker.allow()
    breaker.record(False, generation)
    assert breaker.state is BreakerState.OPEN
    assert breaker.retry_after() == 10.0


def test_results_of_an_older_generation_are_ignored() -> None:
    clock = Clock()
    breaker = CircuitBreaker(
        CircuitBreakerSpec(timeout=10.0, trip="totalFailures > 0"), clock=clock
    )
    old = breaker.generation
    breaker.allow()
    breaker.record(False)
    clock.now += 10.0
    assert breaker.state is BreakerState.HALF_OPEN
    breaker.record(False, old)  # a slow request from before the breaker opened
    assert breaker.state is BreakerState.HALF_OPEN


def test_interval_clears_the_counts_of_a_closed_breaker() -> None:
    clock = Clock()
    breaker = CircuitBreaker(
        CircuitBreakerSpec(interval=5.0, trip="consecutiveFailures >= 2"), clock=clock
    )
    breaker.allow()
    breaker.record(False)
    clock.now += 5.0
    breaker.allow()
    breaker.record(False)
    assert breaker.state is BreakerState.CLOSED


def test_an_outbound_breaker_is_refused_not_ignored(tmp_path: Path) -> None:
    text = RESILIENCY.replace(
        "{inbound: {circuitBreaker: pubsubCB}}", "{outbound: {circuitBreaker: pubsubCB}}"
    )
    with pytest.raises(ConfigError, match="outbound.circuitBreaker: circuit breakers apply to"):
        load(tmp_path, text)
