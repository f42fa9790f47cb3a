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
  kind.  Without a retry policy a call is attempted once.  The policy of a callee in another
  namespace is that of ``<app-id>.<namespace>``, the target as the caller writes it.

A call already taken by a callee whose sidecar then dies fails fast too.  While remote calls to a
topic are pending, one watcher per topic (never one per call; a call adds no lookup of its own to
the one ``request`` makes) asks presence every heartbeat interval whether a server of the topic is
still live.  When none is, every call to that topic that was pending when the lookup began fails
with :class:`~invoke.errors.NoInstance` ("its last instance went away"), so the caller knows within
the heartbeat TTL plus one interval instead of at its time-out; a Resiliency policy retries it
like any ``NoInstance`` (gRPC 14).  Only calls to that topic fail, each through its own task; a
watcher that cannot ask presence (the bus is down) logs it and fails nothing, so those calls keep
their own time-out.  The watcher ends once no call to its topic is pending, and at ``close()``.

The limit: the caller cannot see which replica took a call.  While another instance of the callee
is live, a call taken by one that died still waits for its time-out.  A call that fails this way
may still have run (as after a time-out); it is never run twice.
"""

from __future__ import annotations

import asyncio
import logging
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
from bus.presence import HEARTBEAT_INTERVAL, SERVICE
from invoke.call import DEFAULT_NAMESPACE, AppCaller, Call, Reply, call_topic, same_namespace
from invoke.errors import (
    APP_UNREACHABLE,
    AppUnreachable,
    CircuitOpen,
    InvokeError,
    InvokeTimeout,
    NoInstance,
)
from invoke.server import DEFAULT_CONCURRENCY, InvocationServer

log = logging.getLogger("omnibus.invoke")

# Dapr sets no time-out of its own on an invocation; a bus call needs one.
DEFAULT_TIMEOUT = 60.0

_GONE = "its last instance went away"


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


class _Pending:
    """One remote call awaiting its reply, in its own task, which its topic's watcher may fail.

    Failing cancels that task as ``asyncio.timeout`` does, counting the cancellation so that
    one from elsewhere (a shutdown, an outer time-out) still reaches the caller as such.
    """

    __slots__ = ("task", "cancelling", "failed", "settled")

    def __init__(self, task: asyncio.Task[object]) -> None:
        self.task = task
        self.cancelling = task.cancelling()
        self.failed = False
        self.settled = False

    def fail(self) -> None:
        """Fail the call: its task is cancelled, and :meth:`settle` tells it why."""
        self.failed = True
        self.task.cancel()

    def settle(self) -> bool:
        """Once the call ended: True when it ended because the watcher failed it.

        Takes back the watcher's cancellation exactly once, whichever way the call ended.
        """
        if not self.failed or self.settled:
            return False
        self.settled = True
        return self.task.uncancel() <= self.cancelling


class _Watchers:
    """The pending remote calls per topic, and the one presence watcher of each such topic."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._pending: dict[str, set[_Pending]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def add(self, broker: BaseBroker, topic: str, call: _Pending) -> set[_Pending]:
        """Count ``call`` as pending on ``topic``; starts the topic's watcher if it has none."""
        calls = self._pending.get(topic)
        if calls is None:
            calls = self._pending[topic] = set()
            self._tasks[topic] = asyncio.create_task(
                self._watch(broker, topic, calls), name=f"invoke-watch:{topic}"
            )
        calls.add(call)
        return calls

    async def close(self) -> None:
        """Cancel every watcher; pending calls keep their own time-outs."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    async def _watch(self, broker: BaseBroker, topic: str, calls: set[_Pending]) -> None:
        failing = False
        try:
            while True:
                await asyncio.sleep(self.interval)
                if not calls:
                    return
                asked = set(calls)  # a call that starts during the lookup waits for the next
                try:
                    live = await broker.instances(topic, kind=SERVICE)
                except Exception as exc:
                    # Failing nothing is safe: each call still has its own time-out.
                    level = logging.DEBUG if failing else logging.WARNING
                    log.log(level, "cannot watch the servers of %s: %s", topic, exc)
                    failing = True
                    continue
                failing = False
                if not live:
                    for call in asked & calls:
                        calls.discard(call)
                        call.fail()
        finally:
            # No await between the last look at ``calls`` and this: a call added later finds
            # no entry and starts a new watcher.
            if self._pending.get(topic) is calls:
                del self._pending[topic]
                del self._tasks[topic]


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
        presence_interval: float = HEARTBEAT_INTERVAL,
    ) -> None:
        self.broker = broker
        self.app_id = app_id
        self.namespace = namespace
        self.local = local
        self.policies = policies
        self.default_timeout = default_timeout
        self._server: InvocationServer | None = None
        self._watchers = _Watchers(presence_interval)

    async def serve(self, caller: AppCaller, *, concurrency: int = DEFAULT_CONCURRENCY) -> None:
        """Serve this app's invocations through ``caller`` and call it directly for itself."""
        self.local = caller
        if self.broker is not None and self._server is None:
            self._server = InvocationServer(
                self.broker, self.app_id, caller, concurrency=concurrency, namespace=self.namespace
            )
            await self._server.start()

    async def close(self) -> None:
        """Stop serving (calls in flight finish within the broker's drain bound) and watching."""
        server, self._server = self._server, None
        self.local = None
        await self._watchers.close()
        if server is not None:
            await server.stop()

    async def invoke(self, call: Call, timeout: float | None = None) -> Reply:
        """The callee's reply to ``call`` (any status), or an :class:`InvokeError`."""
        policy = self.policies(self._target(call))
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

    def _target(self, call: Call) -> str:
        """The callee as a Resiliency ``targets.apps`` key: its app id, with ``.<namespace>``
        when that is not this sidecar's (as a caller writes it)."""
        if same_namespace(call.namespace, self.namespace):
            return call.app_id
        return f"{call.app_id}.{call.namespace or DEFAULT_NAMESPACE}"

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
            reply = await self._request(
                broker, app, call_topic(app, call.namespace), request, timeout
            )
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

    async def _request(
        self, broker: BaseBroker, app: str, topic: str, request: Message, timeout: float
    ) -> Message:
        """``broker.request`` while the topic's watcher may fail it (see the module docstring)."""
        task = asyncio.current_task()
        if task is None:
            return await broker.request(topic, request, timeout=timeout)
        pending = _Pending(task)
        calls = self._watchers.add(broker, topic, pending)
        try:
            return await broker.request(topic, request, timeout=timeout)
        except asyncio.CancelledError:
            if pending.settle():
                reason = f"no running instance of app {app}: {_GONE}"
                raise NoInstance(failed_to_invoke(app, reason)) from None
            raise
        finally:
            calls.discard(pending)
            pending.settle()  # a reply or error that won the race with the cancellation


def _record(policy: InvokePolicy, *, success: bool) -> None:
    if policy.breaker is not None:
        policy.breaker.record(success)


def _timed_out(app_id: str, timeout: float) -> InvokeTimeout:
    return InvokeTimeout(failed_to_invoke(app_id, f"no reply within {timeout:g}s"))
