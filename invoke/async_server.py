"""The callee's side of async invocation: serve the app's async topic durably, call the app.

Every sidecar of an app serves :func:`~invoke.call.async_topic` of its app id and namespace in
the bus's *durable* mode, as group = the app id (replicas share the load; a request waits in the
bus until an instance comes up).  For each request the app gets the caller's HTTP request as it
was submitted, plus two headers:

- ``dapr-invocation-id``: the invocation id, the same on every redelivery, so the app can
  de-duplicate (delivery is at least once);
- ``dapr-invocation-attempt``: 1 on the first delivery, growing with every retry.

What happens with the app's answer:

- 1xx-4xx: final; the reply goes to the caller's results topic and is recorded in the result
  store (namespace "done") so that a redelivery of a request already answered is answered from
  the record, never run again.
- 5xx, the app not reachable, or no answer within the policy's time-out: the attempt failed
  (noted in the result store for ``GET`` while pending) and the bus retries it with the policy's
  backoff (the app's Resiliency ``targets.apps.<id>`` retry policy, else the bus default: 10
  attempts, exponential from 0.5 s).  After the last attempt the bus publishes an error reply and
  dead-letters the request to ``<async topic>.deadletter`` (``omnibus dlq list --topic ...``).
  Replaying a dead letter (``omnibus dlq replay``) runs the invocation again, but the caller's
  record keeps its failure: a late result is discarded.
  The error reply of a 5xx carries the app's last response (status, headers and at most
  :data:`MAX_FAILED_BODY` bytes of its body) as JSON, so the caller can record it.
- A ``Retry-After`` (seconds or an HTTP date) on a 5xx is a lower bound of the next wait: the
  attempt waits it out before it fails (at most the policy's time-out, holding one of the
  concurrency slots meanwhile), then the backoff follows.
- An invocation its caller cancelled (visible when the callee shares the caller's result store:
  one machine, or one Redis) is skipped: the app is not called and the reply says so.

The bus's lease of a request (its ``processingTimeout``) is twice the time-out plus a margin, so a
slow attempt ends by our time-out (and an error reply on the last attempt), never by the bus's.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import logging
import time
from dataclasses import dataclass, field, replace

import orjson

from bus.broker import BaseBroker, Subscription
from bus.envelope import Envelope
from bus.message import Message
from bus.options import RetryPolicy, SubscriptionOptions
from bus.rpc import RequestMode
from invoke.call import AppCaller, Call, Reply, async_topic, qualified_id
from invoke.errors import AppUnreachable, InvokeError
from invoke.results import Results, Status

log = logging.getLogger("omnibus.invoke")

INVOCATION_ID_HEADER = "dapr-invocation-id"
ATTEMPT_HEADER = "dapr-invocation-attempt"
ATTEMPT_KEY = "omnibus-invocation-attempt"  # reply metadata: the attempt that answered
SKIPPED_KEY = "omnibus-invocation-skipped"  # reply metadata: not run, and why
APP_FAILED = "APP_FAILED"
APP_TIMEOUT = "APP_TIMEOUT"
MAX_FAILED_BODY = 64 * 1024
DEFAULT_ASYNC_TIMEOUT = 60.0
_LEASE_MARGIN = 5.0


class AppFailed(InvokeError):
    """The app answered with a 5xx; the error text is that response as JSON."""

    code = APP_FAILED

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        super().__init__(encode_failed(reply))


class AppTimeout(InvokeError):
    """The app did not answer an async invocation within the policy's time-out."""

    code = APP_TIMEOUT


def encode_failed(reply: Reply) -> str:
    """The JSON text an APP_FAILED error reply carries (body cut to MAX_FAILED_BODY)."""
    body = reply.body[:MAX_FAILED_BODY]
    return orjson.dumps(
        {
            "status": reply.status,
            "headers": reply.headers.without(["content-length"]).items(),
            "body": base64.b64encode(body).decode("ascii"),
        }
    ).decode()


@dataclass(frozen=True, slots=True)
class AsyncPolicy:
    """How one app's async invocations are run: retries, time-out per attempt, concurrency."""

    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout: float = DEFAULT_ASYNC_TIMEOUT
    concurrency: int = 32

    def options(self, app_id: str) -> SubscriptionOptions:
        """The durable subscription of ``app_id``'s async topic under this policy."""
        return SubscriptionOptions(
            group=app_id,
            concurrency=self.concurrency,
            batch_size=min(self.concurrency, 32),
            processing_timeout=2 * self.timeout + _LEASE_MARGIN,
            retry=self.retry,
        )


class AsyncServer:
    """Serves the async invocations of one app id on the system bus."""

    def __init__(
        self,
        broker: BaseBroker,
        app_id: str,
        caller: AppCaller,
        results: Results,
        policy: AsyncPolicy | None = None,
        *,
        namespace: str = "",
    ) -> None:
        self.broker = broker
        self.app_id = app_id
        self.namespace = namespace  # the sidecar's own; "" or "default" is the default one
        self.caller = caller
        self.results = results
        self.policy = policy or AsyncPolicy()
        self._subscription: Subscription | None = None

    @property
    def topic(self) -> str:
        """The topic served."""
        return async_topic(self.app_id, self.namespace)

    async def start(self) -> None:
        """Serve the app's async topic."""
        if self._subscription is None:
            self._subscription = await self.broker.serve(
                self.topic,
                self.reply,
                self.policy.options(self.app_id),
                mode=RequestMode.DURABLE,
                replies=self.results.replies(qualified_id(self.app_id, self.namespace)),
            )
            log.info("serving async invocations of %s on %s", self.app_id, self.topic)

    async def stop(self) -> None:
        """Stop taking invocations; those in flight finish within the broker's drain bound."""
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            await subscription.stop()

    async def reply(self, request: Message) -> Message:
        """Run one attempt of an invocation; raise to have the bus retry it."""
        call = Call.from_envelope(Envelope.decode(request.data))
        invocation = call.invocation_id or request.id
        if await self._cancelled(call.caller, invocation):
            log.info("skipping invocation %s: its caller cancelled it", invocation)
            return Message(data=b"", metadata={SKIPPED_KEY: Status.CANCELLED.value})
        headers = call.headers.copy()
        headers.set(INVOCATION_ID_HEADER, invocation)
        headers.set(ATTEMPT_HEADER, str(request.attempt))
        try:
            reply = await self._call(replace(call, headers=headers))
        except InvokeError:
            await self._note_failure(invocation, request.attempt)
            raise
        if reply.status >= 500:
            await self._wait_retry_after(reply)
            await self._note_failure(invocation, request.attempt)
            raise AppFailed(reply)
        metadata = {ATTEMPT_KEY: str(request.attempt)}
        return Message(data=reply.to_envelope().encode(), metadata=metadata)

    async def _call(self, call: Call) -> Reply:
        timeout = self.policy.timeout
        try:
            async with asyncio.timeout(timeout):
                return await self.caller(call, timeout)
        except TimeoutError:
            raise AppTimeout(f"the app did not answer within {timeout:g}s") from None
        except InvokeError:
            raise
        except Exception as exc:  # a bug in the app caller must not end as an endless RETRY
            raise AppUnreachable(f"{type(exc).__name__}: {exc}") from exc

    async def _cancelled(self, caller: str, invocation: str) -> bool:
        if not caller:
            return False
        try:
            record = await self.results.get(caller, invocation, attempts=False)
        except Exception:
            log.warning("cannot read invocation %s; running it", invocation, exc_info=True)
            return False
        return record is not None and record.status is Status.CANCELLED

    async def _note_failure(self, invocation: str, attempt: int) -> None:
        try:
            await self.results.note_failed_attempt(invocation, attempt)
        except Exception:  # only GET's attempt count suffers
            log.warning("cannot note attempt %d of %s", attempt, invocation, exc_info=True)

    async def _wait_retry_after(self, reply: Reply) -> None:
        # Within the lease: the call took at most one time-out, the wait takes at most another.
        wait = retry_after(reply.headers.get("retry-after"))
        if wait:
            await asyncio.sleep(min(wait, self.policy.timeout))


def retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` value (delay-seconds or an HTTP date); None if unusable."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
