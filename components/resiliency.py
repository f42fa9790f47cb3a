"""``kind: Resiliency``: parsing, and the retry policy and time-out a pubsub's inbound side gets.

Fields read (Dapr's): ``spec.policies.retries.<name>: {policy, duration, maxInterval, maxRetries,
matching}``, ``spec.policies.timeouts.<name>: <duration>``, ``spec.policies.circuitBreakers``
(names only), ``spec.targets.components.<name>.{inbound,outbound}.{retry,timeout,circuitBreaker}``
and ``spec.targets.apps.<id>.{retry,timeout,circuitBreaker}``; every name a target uses must be
defined under ``policies``.

Conversion to :class:`bus.options.RetryPolicy` (the durable retries of the bus):

- ``maxRetries`` counts retries, so ``max_attempts = maxRetries + 1``; ``-1`` (Dapr's default)
  stays ``-1``, forever; ``0`` dead-letters after the first failed delivery.
- ``constant`` waits ``duration`` (default 5s) every time: multiplier 1, no jitter.
- ``exponential`` starts at ``duration`` if given, else 500ms (Dapr's initial interval), grows by
  1.5 (Dapr's multiplier) up to ``maxInterval`` (default 60s), plus up to half the first interval
  of random jitter (Dapr randomizes by +-50%).
- ``matching`` (HTTP/gRPC status filters) is accepted but not applied: every RETRY is retried.

Which policy applies to a pubsub component's inbound side: ``targets.components.<name>.inbound``,
else Dapr's reserved names ``DefaultPubsubComponentInbound<Kind>Policy``,
``DefaultComponentInbound<Kind>Policy``, ``DefaultComponent<Kind>Policy``, ``Default<Kind>Policy``
(Kind = Retry or Timeout), first found over the loaded Resiliency files in load order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import TypeVar

from bus.options import FOREVER, RetryPolicy
from components.fields import Field
from components.specs import ResiliencySpec, RetrySpec

log = logging.getLogger("omnibus.components")

T = TypeVar("T")

EXPONENTIAL_INITIAL = 0.5
EXPONENTIAL_MULTIPLIER = 1.5

_TARGET_KEYS = {"retry": "retries", "timeout": "timeouts", "circuitBreaker": "circuitBreakers"}
_DIRECTIONS = ("inbound", "outbound")


def parse_resiliency(doc: Field, *, name: str, scopes: tuple[str, ...]) -> ResiliencySpec:
    """A :class:`ResiliencySpec` from a whole ``kind: Resiliency`` document."""
    spec = doc.child("spec")
    policies = spec.child("policies")
    retries = {key: _retry(field) for key, field in policies.child("retries").items()}
    timeouts = {key: _timeout(field) for key, field in policies.child("timeouts").items()}
    breakers = {key for key, field in policies.child("circuitBreakers").items() if _mapping(field)}
    defined = {"retries": set(retries), "timeouts": set(timeouts), "circuitBreakers": breakers}
    targets = spec.child("targets")
    components = {
        component: MappingProxyType(
            {
                direction: _target(field.child(direction), defined)
                for direction in _DIRECTIONS
                if field.child(direction).present
            }
        )
        for component, field in targets.child("components").items()
        if _only(field, _DIRECTIONS)
    }
    apps = {app: _target(field, defined) for app, field in targets.child("apps").items()}
    return ResiliencySpec(
        name=name,
        retries=MappingProxyType(retries),
        timeouts=MappingProxyType(timeouts),
        components=MappingProxyType(components),
        apps=MappingProxyType(apps),
        scopes=scopes,
        source=doc.source,
    )


def to_retry_policy(spec: RetrySpec) -> RetryPolicy:
    """The bus retry policy equivalent to a Resiliency retry policy (see the module docstring)."""
    max_attempts = FOREVER if spec.max_retries == FOREVER else spec.max_retries + 1
    if spec.policy == "constant":
        return RetryPolicy(
            max_attempts=max_attempts,
            initial_interval=spec.duration,
            max_interval=spec.duration,
            multiplier=1.0,
            jitter=0.0,
        )
    return RetryPolicy(
        max_attempts=max_attempts,
        initial_interval=spec.duration,
        max_interval=max(spec.max_interval, spec.duration),
        multiplier=EXPONENTIAL_MULTIPLIER,
        jitter=spec.duration / 2,
    )


def inbound_retry(resiliencies: Sequence[ResiliencySpec], component: str) -> RetryPolicy | None:
    """The retry policy for the inbound side of pubsub ``component``, or None if none applies."""
    found = _inbound(resiliencies, component, "retry", lambda r: r.retries)
    return None if found is None else to_retry_policy(found)


def inbound_timeout(resiliencies: Sequence[ResiliencySpec], component: str) -> float | None:
    """The time-out for the inbound side of pubsub ``component``, or None if none applies."""
    return _inbound(resiliencies, component, "timeout", lambda r: r.timeouts)


def _inbound(
    resiliencies: Sequence[ResiliencySpec],
    component: str,
    key: str,
    table: Callable[[ResiliencySpec], Mapping[str, T]],
) -> T | None:
    for resiliency in resiliencies:
        target = resiliency.components.get(component, {}).get("inbound", {})
        if key in target:
            return table(resiliency)[target[key]]
    kind = key.capitalize()
    for reserved in (
        f"DefaultPubsubComponentInbound{kind}Policy",
        f"DefaultComponentInbound{kind}Policy",
        f"DefaultComponent{kind}Policy",
        f"Default{kind}Policy",
    ):
        for resiliency in resiliencies:
            policies = table(resiliency)
            if reserved in policies:
                return policies[reserved]
    return None


def _retry(field: Field) -> RetrySpec:
    policy = field.child("policy").optional_string() or "constant"
    if policy not in ("constant", "exponential"):
        raise field.child("policy").fail("'constant' or 'exponential'")
    if field.child("matching").present:
        log.info("%s: %s.matching is not applied: every RETRY is retried", field.source, field.path)
    default_duration = 5.0 if policy == "constant" else EXPONENTIAL_INITIAL
    return RetrySpec(
        policy="constant" if policy == "constant" else "exponential",
        duration=field.child("duration").duration(default_duration),
        max_interval=field.child("maxInterval").duration(60.0),
        max_retries=field.child("maxRetries").integer(FOREVER, minimum=FOREVER),
    )


def _timeout(field: Field) -> float:
    if not field.present:
        raise field.fail("a duration like '5s'")
    return field.duration(0.0)


def _target(field: Field, defined: Mapping[str, set[str]]) -> Mapping[str, str]:
    names: dict[str, str] = {}
    for key, policies in _TARGET_KEYS.items():
        name = field.child(key).optional_string()
        if name is None:
            continue
        if name not in defined[policies]:
            known = ", ".join(sorted(defined[policies])) or "none"
            raise field.child(key).fail(
                f"the name of a policy under spec.policies.{policies} ({known})"
            )
        names[key] = name
    return MappingProxyType(names)


def _mapping(field: Field) -> bool:
    field.mapping()  # raises unless a mapping (or empty)
    return True


def _only(field: Field, allowed: Sequence[str]) -> bool:
    for key, child in field.items():
        if key not in allowed:
            raise child.error(f"unknown key: expected one of {', '.join(allowed)}")
    return True
