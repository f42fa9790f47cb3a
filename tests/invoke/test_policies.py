"""Resiliency ``targets.apps`` as invocation policies: retries with Dapr's matching lists."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from components.loader import load_resources
from components.specs import Resources
from invoke.client import NO_POLICY, InvokePolicy
from runtime.api.invoke import app_policies

RESILIENCY = """\
apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata: {name: r}
spec:
  policies:
    timeouts:
      quick: 2s
    retries:
      some:
        policy: constant
        duration: 10ms
        maxRetries: 3
        matching:
          httpStatusCodes: "500,502-504,15,404-405-500,-1,0,"
          gRPCStatusCodes: "14, 2-4"
      every:
        policy: constant
        maxRetries: 1
  targets:
    apps:
      orders: {retry: some, timeout: quick}
      billing: {retry: every}
"""


def _load(tmp_path: Path, text: str) -> Resources:
    (tmp_path / "resiliency.yaml").write_text(text)
    return load_resources([tmp_path], app_id="checkout", environ={})


def test_matching_lists_parse_as_dapr_does(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="omnibus.components"):
        (resiliency,) = _load(tmp_path, RESILIENCY).resiliencies
    some = resiliency.retries["some"]
    assert some.http_status_codes == frozenset({500, 502, 503, 504})
    assert some.grpc_status_codes == frozenset({2, 3, 4, 14})
    for bad in ("'15'", "'404-405-500'", "'-1'", "'0'"):
        assert bad in caplog.text
    every = resiliency.retries["every"]
    assert every.http_status_codes is None and every.grpc_status_codes is None


def test_app_targets_become_invocation_policies(tmp_path: Path) -> None:
    policies = app_policies(_load(tmp_path, RESILIENCY).resiliencies)
    orders = policies("orders")
    assert orders.timeout == 2.0
    assert orders.retry is not None
    assert orders.retry.http_statuses == frozenset({500, 502, 503, 504})
    assert orders.retry.policy.max_attempts == 4
    assert policies("billing").retry is not None
    assert policies("billing").retry.http_statuses is None  # type: ignore[union-attr]
    assert policies("other") == InvokePolicy()


DEFAULTS = """\
apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata: {name: d}
spec:
  policies:
    timeouts:
      DefaultTimeoutPolicy: 3s
      DefaultAppTimeoutPolicy: 4s
    retries:
      DefaultRetryPolicy: {policy: constant, duration: 1s, maxRetries: 2}
    circuitBreakers:
      DefaultAppCircuitBreakerPolicy: {trip: consecutiveFailures > 1, timeout: 30s}
"""


def test_reserved_defaults_apply_to_every_app(tmp_path: Path) -> None:
    policies = app_policies(_load(tmp_path, DEFAULTS).resiliencies)
    policy = policies("anyone")
    assert policy.timeout == 4.0  # the app default wins over the general one
    assert policy.retry is not None and policy.retry.policy.max_attempts == 3
    breaker = policy.breaker
    assert breaker is not None
    # one breaker per app, kept across calls; each app has its own
    assert policies("anyone").breaker is breaker
    assert policies("someone").breaker is not breaker
    breaker.record(False)
    breaker.record(False)
    assert not breaker.allow()


def test_no_resiliency_means_no_policy() -> None:
    assert app_policies(())("orders") is NO_POLICY
