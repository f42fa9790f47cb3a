"""The caller's side of sync invocation: :class:`Invoker` sends a :class:`Call`, returns the Reply.

- A call to the sidecar's own app id goes straight to the local :class:`AppCaller` (no bus hop).
- Any other goes to :func:`~invoke.call.call_topic` of the callee with ``broker.request`` in call
  mode (at most once per attempt).  Failures become :class:`~invoke.errors.InvokeError`\\ s whose
  messages follow Dapr's ``failed to invoke, id: X, err: ...``: no running instance (at once, from
  presence), the app not listening (the callee's reason), no reply within the time-out.
- A :class:`InvokePolicy` per callee (Dapr's ``kind: Resiliency`` ``targets.apps.<id>``) applies:
  a time-out per attempt, retries, a circuit breaker.  As in Dapr, a reply with a status below 200
  or above 399 counts as a failure for retries and the breaker, and the last reply is returned
  as is.  ``matching.httpStatusCodes`` restricts which statuses are retried, and
  ``matching.gRPCStatusCodes`` which transport failures (by the gRPC code a Dapr sidecar pair
  would see: 14 Unavailable, 4 DeadlineExceeded); a list left out retries every failure of its
  kind.  Without a retry policy a call is attempted once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from bus.broker import BaseBroker
from bus.envelope import Envelope
from bus.errors import (
    BrokerError,
    InvalidArgument,
    NoResponders,
    RemoteError,
    RequestError,
    RequestTimeout,
)
from bus.message import Message
from bus.options import RetryPolicy
from invoke.call import AppCaller, Call, Reply, call_topic, same_namespace
from invoke.errors import (
    APP_UNREACHABLE,
    AppUnreachable,
    CircuitOpen,
    InvokeError,
    InvokeTimeout,
    NoInstance,
)
from invoke.server import DEFAULT_CONCURRENCY, InvocationServer

# Dapr sets no time-out of its own on an invocation; a bus call needs one.
DEFAULT_TIMEOUT = 60.0


class Breaker(Protocol):
    """A circuit breaker: whether a call may go out now, and how each one went."""

    def allow(self) -> bool:
        """True when a call may be attempted."""
        ...

    def record(self, success: bool) -> None:
        """Count the outcome of one attempted call."""
        ...


@dataclass(frozen=True, slots=True)
class RetryRule:
    """When a failed attempt is retried: the backoff and Dapr's ``matching`` filters."""

    policy: RetryPolicy
    http_statuses: frozenset[int] | None = None  # None: every failure status
    grpc_codes: frozenset[int] | None = None  # None: every transport failure

    def retries_status(self, status: int, attempt: int) -> bool:
        """True when a reply with ``status`` after attempt number ``attempt`` is retried."""
        if self.policy.exhausted(attempt):
            return False
        return self.http_statuses is None or status in self.http_statuses

    def retries_error(self, exc: InvokeError, attempt: int) -> bool:
        """True when ``exc`` on attempt number ``attempt`` is retried."""
        if self.policy.exhausted(attempt):
            return False
        return self.grpc_codes is None or exc.grpc_code in self.grpc_codes


@dataclass(frozen=True, slots=True)
class InvokePolicy:
    """What applies to the calls to one app: time-out per attempt, retries, circuit breaker."""

    timeout: float | None = None
    retry: RetryRule | None = None
    breaker: Breaker | None = None


NO_POLICY = InvokePolicy()


def is_failure(status: int) -> bool:
    """Dapr's rule: a reply below 200 or above 399 is a failure for retries and breakers."""
    return status < 200 or status > 399


def failed_to_invoke(app_id: str, reason: str) -> str:
    """Dapr's wording of a failed invocation."""
    return f"failed to invoke, id: {app_id}, err: {reason}"


class Invoker:
    """Sends calls to apps: the local one directly, others over the system bus."""

    def __init__(
        self,
        broker: BaseBroker | None,
        app_id: str,
        *,
        local: AppCaller | None = None,
        policies: Callable[[str], InvokePolicy] = lambda _: NO_POLICY,
        default_timeout: float = DEFAULT_TIMEOUT,
        namespace: str = "",
    ) -> None:
        self.broker = broker
        self.app_id = app_id
        self.namespace = namespace
        self.local = local
        self.policies = policies
        self.default_timeout = default_timeout
        self._server: InvocationServer | None = None

    async def serve(self, caller: AppCaller, *, concurrency: int = DEFAULT_CONCURRENCY) -> None:
        """Serve this app's invocations through ``caller`` and call it directly for itself."""
        self.local = caller
        if self.broker is not None and self._server is None:
            self._server = InvocationServer(
                self.broker, self.app_id, caller, concurrency=concurrency
            )
            await self._server.start()

    async def close(self) -> None:
        """Stop serving (calls in flight finish within the broker's drain bound)."""
        server, self._server = self._server, None
        self.local = None
        if server is not None:
            await server.stop()

    async def invoke(self, call: Call, timeout: float | None = None) -> Reply:
        """The callee's reply to ``call`` (any status), or an :class:`InvokeError`."""
        policy = self.policies(call.app_id)
        per_attempt = policy.timeout or timeout or self.default_timeout
        attempt = 1
        while True:
            if policy.breaker is not None and not policy.breaker.allow():
                raise CircuitOpen(failed_to_invoke(call.app_id, "circuit breaker is open"))
            try:
                reply = await self._attempt(call, per_attempt)
            except InvokeError as exc:
                _record(policy, success=False)
                if policy.retry is None or not policy.retry.retries_error(exc, attempt):
                    raise
            else:
                failed = is_failure(reply.status)
                _record(policy, success=not failed)
                if not failed or policy.retry is None:
                    return reply
                if not policy.retry.retries_status(reply.status, attempt):
                    return reply
            await asyncio.sleep(policy.retry.policy.delay(attempt))
            attempt += 1

    async def _attempt(self, call: Call, timeout: float) -> Reply:
        if self.local is not None and self._is_own(call):
            return await self._call_local(self.local, call, timeout)
        if self.broker is None:
            raise NoInstance(failed_to_invoke(call.app_id, "no system bus to reach other apps"))
        return await self._call_remote(self.broker, call, timeout)

    def _is_own(self, call: Call) -> bool:
        return call.app_id == self.app_id and same_namespace(call.namespace, self.namespace)

    async def _call_local(self, local: AppCaller, call: Call, timeout: float) -> Reply:
        try:
            async with asyncio.timeout(timeout):
                return await local(call, timeout)
        except TimeoutError:
            raise _timed_out(call.app_id, timeout) from None
        except AppUnreachable as exc:
            raise AppUnreachable(failed_to_invoke(call.app_id, exc.reason)) from exc

    async def _call_remote(self, broker: BaseBroker, call: Call, timeout: float) -> Reply:
        request = Message(data=call.to_envelope().encode())
        app = call.app_id
        try:
            reply = await broker.request(call_topic(app, call.namespace), request, timeout=timeout)
        except NoResponders:
            raise NoInstance(failed_to_invoke(app, f"no running instance of app {app}")) from None
        except RequestTimeout:
            raise _timed_out(app, timeout) from None
        except RemoteError as exc:
            if exc.code == APP_UNREACHABLE:
                raise AppUnreachable(failed_to_invoke(app, exc.message)) from exc
            raise InvokeError(failed_to_invoke(app, str(exc))) from exc
        except (RequestError, BrokerError) as exc:
            raise InvokeError(failed_to_invoke(app, f"{type(exc).__name__}: {exc}")) from exc
        try:
            return Reply.from_envelope(Envelope.decode(reply.data))
        except InvalidArgument as exc:
            raise InvokeError(failed_to_invoke(app, f"unreadable reply: {exc}")) from None


def _record(policy: InvokePolicy, *, success: bool) -> None:
    if policy.breaker is not None:
        policy.breaker.record(success)


def _timed_out(app_id: str, timeout: float) -> InvokeTimeout:
    return InvokeTimeout(failed_to_invoke(app_id, f"no reply within {timeout:g}s"))
