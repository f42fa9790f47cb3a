"""``kind: Resiliency``: parsing, and the retry policy and time-out a pubsub's inbound side gets.

Fields read (Dapr's): ``spec.policies.retries.<name>: {policy, duration, maxInterval, maxRetries,
matching}``, ``spec.policies.timeouts.<name>: <duration>``, ``spec.policies.circuitBreakers.<name>:
{maxRequests, interval, timeout, trip}``,
``spec.targets.components.<name>.{inbound,outbound}.{retry,timeout,circuitBreaker}`` and
``spec.targets.apps.<id>.{retry,timeout,circuitBreaker}``; every name a target uses must be
defined under ``policies``.

Conversion to :class:`bus.options.RetryPolicy` (the durable retries of the bus):

- ``maxRetries`` counts retries, so ``max_attempts = maxRetries + 1``; ``-1`` (Dapr's default)
  stays ``-1``, forever; ``0`` dead-letters after the first failed delivery.
- ``constant`` waits ``duration`` (default 5s) every time: multiplier 1, no jitter.
- ``exponential`` starts at ``duration`` if given, else 500ms (Dapr's initial interval), grows by
  1.5 (Dapr's multiplier) up to ``maxInterval`` (default 60s), plus up to half the first interval
  of random jitter (Dapr randomizes by +-50%).
- ``matching.httpStatusCodes`` / ``matching.gRPCStatusCodes`` (comma-separated codes and
  ``a-b`` ranges; a bad entry is logged and ignored, as in Dapr) restrict which failures service
  invocation retries; a pubsub's inbound side retries every RETRY whatever they say.

Which policy applies to a pubsub component's inbound side: ``targets.components.<name>.inbound``,
else Dapr's reserved names ``DefaultPubsubComponentInbound<Kind>Policy``,
``DefaultComponentInbound<Kind>Policy``, ``DefaultComponent<Kind>Policy``, ``Default<Kind>Policy``
(Kind = Retry, Timeout or CircuitBreaker), first found over the loaded Resiliency files in load
order.  A circuit breaker on a component's ``outbound`` side is refused: nothing would enforce
it.  An app target (service invocation) uses ``targets.apps.<id>``, else
``DefaultAppCircuitBreakerPolicy`` / ``DefaultCircuitBreakerPolicy`` (and likewise for the others).

Circuit breakers (:class:`CircuitBreaker`) behave as Dapr's (sony/gobreaker): closed, every
request goes through and its result is counted; when ``trip`` (CEL over ``requests``,
``totalSuccesses``, ``totalFailures``, ``consecutiveSuccesses``, ``consecutiveFailures``) turns
true after a failure, the breaker opens and refuses everything for ``timeout``; then, half-open,
``maxRequests`` requests go through: that many successes close it, one failure opens it again.
``interval`` > 0 clears the counts of a closed breaker that often.  The sidecar enforces a
pubsub's inbound breaker by not pulling messages while it is open (they stay in the broker).
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, TypeVar

from bus.errors import ConfigError
from bus.options import FOREVER, RetryPolicy
from components.fields import Field
from components.specs import CircuitBreakerSpec, ResiliencySpec, RetrySpec

log = logging.getLogger("omnibus.components")

T = TypeVar("T")

EXPONENTIAL_INITIAL = 0.5
EXPONENTIAL_MULTIPLIER = 1.5

_TARGET_KEYS = {"retry": "retries", "timeout": "timeouts", "circuitBreaker": "circuitBreakers"}
_KINDS = {"retry": "Retry", "timeout": "Timeout", "circuitBreaker": "CircuitBreaker"}
_DIRECTIONS = ("inbound", "outbound")


def parse_resiliency(doc: Field, *, name: str, scopes: tuple[str, ...]) -> ResiliencySpec:
    """A :class:`ResiliencySpec` from a whole ``kind: Resiliency`` document."""
    spec = doc.child("spec")
    policies = spec.child("policies")
    retries = {key: _retry(field) for key, field in policies.child("retries").items()}
    timeouts = {key: _timeout(field) for key, field in policies.child("timeouts").items()}
    breakers = {key: _breaker(field) for key, field in policies.child("circuitBreakers").items()}
    defined = {"retries": set(retries), "timeouts": set(timeouts), "circuitBreakers": set(breakers)}
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
        if _only(field, _DIRECTIONS) and _no_outbound_breaker(field)
    }
    apps = {app: _target(field, defined) for app, field in targets.child("apps").items()}
    return ResiliencySpec(
        name=name,
        retries=MappingProxyType(retries),
        timeouts=MappingProxyType(timeouts),
        circuit_breakers=MappingProxyType(breakers),
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


def inbound_breaker(
    resiliencies: Sequence[ResiliencySpec], component: str
) -> CircuitBreakerSpec | None:
    """The circuit breaker for the inbound side of pubsub ``component``, or None."""
    return _inbound(resiliencies, component, "circuitBreaker", lambda r: r.circuit_breakers)


def app_breaker(resiliencies: Sequence[ResiliencySpec], app_id: str) -> CircuitBreakerSpec | None:
    """The circuit breaker for calls to app ``app_id`` (``targets.apps``), or None."""
    for resiliency in resiliencies:
        name = resiliency.apps.get(app_id, {}).get("circuitBreaker")
        if name is not None:
            return resiliency.circuit_breakers[name]
    return _reserved(
        resiliencies,
        ("DefaultAppCircuitBreakerPolicy", "DefaultCircuitBreakerPolicy"),
        lambda r: r.circuit_breakers,
    )


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
    kind = _KINDS[key]
    names = (
        f"DefaultPubsubComponentInbound{kind}Policy",
        f"DefaultComponentInbound{kind}Policy",
        f"DefaultComponent{kind}Policy",
        f"Default{kind}Policy",
    )
    return _reserved(resiliencies, names, table)


def _reserved(
    resiliencies: Sequence[ResiliencySpec],
    names: Sequence[str],
    table: Callable[[ResiliencySpec], Mapping[str, T]],
) -> T | None:
    for reserved in names:
        for resiliency in resiliencies:
            policies = table(resiliency)
            if reserved in policies:
                return policies[reserved]
    return None


def _retry(field: Field) -> RetrySpec:
    policy = field.child("policy").optional_string() or "constant"
    if policy not in ("constant", "exponential"):
        raise field.child("policy").fail("'constant' or 'exponential'")
    matching = field.child("matching")
    default_duration = 5.0 if policy == "constant" else EXPONENTIAL_INITIAL
    return RetrySpec(
        policy="constant" if policy == "constant" else "exponential",
        duration=field.child("duration").duration(default_duration),
        max_interval=field.child("maxInterval").duration(60.0),
        max_retries=field.child("maxRetries").integer(FOREVER, minimum=FOREVER),
        http_status_codes=_codes(matching.child("httpStatusCodes"), 100, 599),
        grpc_status_codes=_codes(matching.child("gRPCStatusCodes"), 1, 16),
    )


def _codes(field: Field, low: int, high: int) -> frozenset[int] | None:
    """Dapr's status list (``"500,502-504"``); entries outside low..high are logged, ignored."""
    text = field.optional_string()
    if text is None:
        return None
    codes: set[int] = set()
    for entry in (part.strip() for part in text.split(",")):
        first, _, last = entry.partition("-")
        try:
            start, end = int(first), int(last or first)
        except ValueError:
            start = end = -1
        if not entry or "-" in last or not low <= start <= end <= high:
            if entry:
                where = f"{field.source}: {field.path}"
                log.error("%s: ignoring %r (codes are %d-%d)", where, entry, low, high)
            continue
        codes.update(range(start, end + 1))
    return frozenset(codes)


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


def _breaker(field: Field) -> CircuitBreakerSpec:
    field.mapping()  # raises unless a mapping (or empty)
    defaults = CircuitBreakerSpec()
    trip = field.child("trip").optional_string() or defaults.trip
    try:
        compile_trip(trip)
    except ConfigError as exc:
        raise field.child("trip").fail(f"a CEL expression over the counts ({exc})") from None
    return CircuitBreakerSpec(
        max_requests=field.child("maxRequests").integer(defaults.max_requests, minimum=1),
        interval=field.child("interval").duration(defaults.interval),
        timeout=field.child("timeout").duration(defaults.timeout),
        trip=trip,
    )


def _no_outbound_breaker(field: Field) -> bool:
    # Nothing would enforce it (publishes and state calls have no breaker); refused rather than
    # accepted and ignored.
    breaker = field.child("outbound").child("circuitBreaker")
    if breaker.present:
        raise breaker.error(
            "circuit breakers apply to a component's inbound side and to apps only; "
            "move it to inbound or remove it"
        )
    return True


def _only(field: Field, allowed: Sequence[str]) -> bool:
    for key, child in field.items():
        if key not in allowed:
            raise child.error(f"unknown key: expected one of {', '.join(allowed)}")
    return True


def compile_trip(expression: str) -> Any:
    """The compiled CEL program of a breaker's ``trip``; ConfigError if it does not compile."""
    import cel  # imported here: the package is large and only breakers need it

    try:
        return cel.compile(expression)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise ConfigError(f"trip {expression!r} is not a valid CEL expression: {exc}") from exc


class BreakerState(enum.Enum):
    """Where a circuit breaker stands."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class CircuitBreaker:
    """A circuit breaker as Dapr's (sony/gobreaker): ask :meth:`allow`, then :meth:`record`.

    ``clock`` returns seconds (``time.monotonic`` unless a test gives its own).  A result
    recorded for a request let through before the last change of state is ignored, as gobreaker
    does with its generations.
    """

    def __init__(
        self,
        spec: CircuitBreakerSpec,
        *,
        name: str = "circuit breaker",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.spec = spec
        self.name = name
        self._trip = compile_trip(spec.trip)
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._generation = 0
        self._expiry = self._closed_expiry()  # when the counts clear, or open ends; 0: never
        self._counts = dict.fromkeys(_COUNTS, 0)

    @property
    def state(self) -> BreakerState:
        """The state now (an open breaker whose timeout passed is half-open)."""
        self._advance()
        return self._state

    @property
    def generation(self) -> int:
        """Changes with every change of state."""
        self._advance()
        return self._generation

    def retry_after(self) -> float:
        """Seconds until an open breaker goes half-open; 0 when it is not open."""
        if self.state is not BreakerState.OPEN:
            return 0.0
        return max(self._expiry - self._clock(), 0.0)

    def allow(self) -> bool:
        """Whether a request may go through now; a True counts it as a request."""
        self._advance()
        if self._state is BreakerState.OPEN:
            return False
        if self._state is BreakerState.HALF_OPEN and (
            self._counts["requests"] >= self.spec.max_requests
        ):
            return False
        self._counts["requests"] += 1
        return True

    def record(self, success: bool, generation: int | None = None) -> None:
        """Count the result of a request let through by :meth:`allow`."""
        self._advance()
        if generation is not None and generation != self._generation:
            return
        counts = self._counts
        if success:
            counts["totalSuccesses"] += 1
            counts["consecutiveSuccesses"] += 1
            counts["consecutiveFailures"] = 0
            if self._state is BreakerState.HALF_OPEN and (
                counts["consecutiveSuccesses"] >= self.spec.max_requests
            ):
                self._set(BreakerState.CLOSED)
            return
        counts["totalFailures"] += 1
        counts["consecutiveFailures"] += 1
        counts["consecutiveSuccesses"] = 0
        if self._state is BreakerState.HALF_OPEN or self._tripped():
            self._set(BreakerState.OPEN)

    def _tripped(self) -> bool:
        try:
            return self._trip.execute(dict(self._counts)) is True
        except (ValueError, RuntimeError, TypeError, KeyError) as exc:
            log.error("circuit breaker trip %r failed: %s; not tripping", self.spec.trip, exc)
            return False

    def _advance(self) -> None:
        now = self._clock()
        if self._state is BreakerState.CLOSED:
            if self._expiry and self._expiry <= now:
                self._new_generation(self._closed_expiry())
        elif self._state is BreakerState.OPEN and self._expiry <= now:
            self._set(BreakerState.HALF_OPEN)

    def _set(self, state: BreakerState) -> None:
        if state is BreakerState.CLOSED:
            log.info("%s closed", self.name)
        else:
            log.warning("%s %s", self.name, state.value)
        self._state = state
        if state is BreakerState.OPEN:
            self._new_generation(self._clock() + self.spec.timeout)
        elif state is BreakerState.CLOSED:
            self._new_generation(self._closed_expiry())
        else:
            self._new_generation(0.0)

    def _new_generation(self, expiry: float) -> None:
        self._generation += 1
        self._expiry = expiry
        self._counts = dict.fromkeys(_COUNTS, 0)

    def _closed_expiry(self) -> float:
        return self._clock() + self.spec.interval if self.spec.interval > 0 else 0.0


_COUNTS = (
    "requests",
    "totalSuccesses",
    "totalFailures",
    "consecutiveSuccesses",
    "consecutiveFailures",
)
