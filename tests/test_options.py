"""Durations, retry policies and subscription options."""

from __future__ import annotations

import pytest

from bus.backoff import Backoff
from bus.errors import ConfigError, InvalidArgument, InvalidName
from bus.options import RetryPolicy, SubscriptionOptions, parse_bool, parse_duration


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("30s", 30.0),
        ("1m30s", 90.0),
        ("500ms", 0.5),
        ("2h", 7200.0),
        ("1.5s", 1.5),
        ("15000", 15.0),  # a bare number is milliseconds, as in Dapr
        (250, 0.25),
        ("0", 0.0),
    ],
)
def test_parse_duration_accepts_go_durations_and_milliseconds(
    value: object, seconds: float
) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["", "abc", "30 seconds", "-5s", "5d", None, True, -1])
def test_parse_duration_rejects_garbage_with_the_field_name(value: object) -> None:
    with pytest.raises(InvalidArgument, match="redeliverInterval"):
        parse_duration(value, what="redeliverInterval")


def test_retry_delays_grow_exponentially_up_to_the_cap() -> None:
    policy = RetryPolicy(initial_interval=1.0, multiplier=2.0, max_interval=5.0, jitter=0.0)
    assert [policy.delay(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_retry_jitter_stays_within_bounds() -> None:
    policy = RetryPolicy(initial_interval=1.0, multiplier=2.0, max_interval=60.0, jitter=0.5)
    delays = [policy.delay(2) for _ in range(200)]
    assert all(2.0 <= d <= 2.5 for d in delays)
    assert len(set(delays)) > 1


def test_retry_exhaustion_counts_deliveries() -> None:
    assert not RetryPolicy(max_attempts=3).exhausted(2)
    assert RetryPolicy(max_attempts=3).exhausted(3)
    assert not RetryPolicy(max_attempts=-1).exhausted(10_000)


def test_subscription_options_validate_and_default_the_dead_letter_topic() -> None:
    options = SubscriptionOptions(group="orders-app")
    assert options.dead_letter_for("orders") == "orders.deadletter"
    assert (
        SubscriptionOptions(group="g", dead_letter_topic="poison").dead_letter_for("x") == "poison"
    )
    with pytest.raises(InvalidName):
        SubscriptionOptions(group="g", dead_letter_topic="bad topic")
    with pytest.raises(InvalidArgument):
        SubscriptionOptions(group="g", concurrency=0)
    with pytest.raises(InvalidArgument):
        SubscriptionOptions(group="g", batch_size=0)


@pytest.mark.parametrize("text", ["1", "t", "T", "true", "TRUE", " True ", "y", "Yes", "on", "ON"])
def test_parse_bool_accepts_daprs_true_spellings(text: str) -> None:
    assert parse_bool(text, what="enableTLS") is True


@pytest.mark.parametrize("text", ["0", "f", "F", "false", "False", " no ", "n", "N", "off", "OFF"])
def test_parse_bool_accepts_daprs_false_spellings(text: str) -> None:
    assert parse_bool(text, what="durable") is False


@pytest.mark.parametrize("text", ["", "  ", "2", "tru", "enabled", "yess", "o"])
def test_parse_bool_rejects_anything_else_naming_the_field(text: str) -> None:
    with pytest.raises(ConfigError, match="^durable: expected a boolean"):
        parse_bool(text, what="durable")


def test_backoff_grows_to_its_cap_with_bounded_jitter() -> None:
    backoff = Backoff(initial=0.1, maximum=1.0, multiplier=2.0, jitter=0.05)
    for attempt, low in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (500, 1.0)]:
        delay = backoff.delay(attempt)
        assert low <= delay <= min(low + 0.05, 1.0)


async def test_backoff_retrying_retries_the_named_errors_then_gives_up() -> None:
    calls: list[int] = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("down")
        return "up"

    quick = Backoff(initial=0.001, maximum=0.001, jitter=0.0)
    assert await quick.retrying("flaky", on=ConnectionError)(flaky) == "up"
    assert len(calls) == 3

    async def broken() -> str:
        calls.append(1)
        raise ConnectionError("still down")

    calls.clear()
    with pytest.raises(ConnectionError, match="still down"):
        await quick.retrying("broken", on=ConnectionError, attempts=4)(broken)
    assert len(calls) == 4
    with pytest.raises(KeyError):  # an error it was not told to retry goes through at once
        await quick.retrying("other", on=ConnectionError)(_raise_key_error)


async def _raise_key_error() -> None:
    raise KeyError("x")


@pytest.mark.parametrize("timeout", [0.2, 0.5, 5.0, 60.0, 3600.0])
def test_a_lease_outlives_the_handler_deadline_and_the_watchdogs_lateness(timeout: float) -> None:
    options = SubscriptionOptions(group="g", processing_timeout=timeout)
    assert options.watchdog_interval <= 1.0
    # the watchdog cancels a handler at most one interval late; the lease leaves a margin more
    assert options.lease > timeout + options.watchdog_interval
    assert options.lease <= timeout + 2.0


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "9" * 400])
def test_a_duration_must_be_finite(value: object) -> None:
    with pytest.raises(InvalidArgument, match="not a finite duration"):
        parse_duration(value, what="redeliverInterval")
