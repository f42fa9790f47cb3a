"""The caller's side of async invocation: submit, record results, answer GET, call back.

Submit: a new invocation id (or the one an ``Idempotency-Key`` always maps to, see
:func:`~invoke.results.invocation_id`) is recorded as pending in the result store, then the call
is submitted durably to the callee's :func:`~invoke.call.async_topic` with its replies going to
:func:`results_topic` of the caller app in its namespace.  :meth:`AsyncClient.submit` returns
once the broker holds the request; the callee need not be running.  A resubmission with the same
key returns the existing invocation and submits nothing.  If the submit itself fails the pending
record is removed again, so the same key may be tried once more.  (A sidecar killed between
recording and submitting leaves a pending record that never completes; it expires with the TTL.)

Results: every sidecar of the caller app subscribes to its results topic (group = the app id) and
records each reply in the invocation's record: ``completed`` with the app's response (any status
below 500), or ``failed`` with the app's last 5xx response, or, when the app could not be reached
or did not answer, a 500 with Dapr's error body (``ERR_DIRECT_INVOKE``).  A reply for an invocation
that was cancelled, already finished, or is unknown (expired) is discarded.

Callback: a record with a callback method gets the result POSTed to that method of the caller
app once recorded, with headers ``dapr-invocation-id``, ``dapr-invocation-status`` and
``dapr-invocation-http-status`` (the callee's status) and the callee's body and content type.
At least once: the reply is retried (forever, with backoff up to a minute) until the app answers
2xx; once it has, the record notes it and a redelivered reply does not call back again.  A
sidecar without an app port cannot call back; it leaves that to another sidecar of the app.
"""

from __future__ import annotations

import base64
import logging
import time
from dataclasses import dataclass, replace

import orjson

from bus.broker import BaseBroker, Subscription
from bus.envelope import Envelope, Headers
from bus.errors import InvalidArgument
from bus.message import Message, Outcome
from bus.options import FOREVER, RetryPolicy, SubscriptionOptions
from bus.rpc import ERROR_KEY
from invoke.async_server import APP_FAILED, ATTEMPT_KEY, INVOCATION_ID_HEADER, SKIPPED_KEY
from invoke.call import AppCaller, Call, Reply, async_topic, qualified_id
from invoke.results import InvocationRecord, Results, Status, invocation_id

log = logging.getLogger("omnibus.invoke")

RESULTS_TOPIC_PREFIX = "omnibus.invocations."
STATUS_HEADER = "dapr-invocation-status"
HTTP_STATUS_HEADER = "dapr-invocation-http-status"
CALLBACK_TIMEOUT = 30.0
_RESULT_RETRY = RetryPolicy(
    max_attempts=FOREVER, initial_interval=0.5, max_interval=60.0, multiplier=2.0, jitter=0.5
)


def results_topic(app_id: str, namespace: str = "") -> str:
    """The topic on which the replies to the async invocations of ``app_id`` in ``namespace``
    arrive (one app id in two namespaces is two apps, each recording its own results)."""
    return RESULTS_TOPIC_PREFIX + qualified_id(app_id, namespace)


@dataclass(frozen=True, slots=True)
class Submission:
    """One async invocation as the caller asked for it."""

    call: Call
    idempotency_key: str | None = None
    callback: str | None = None


def dapr_error(status: int, code: str, message: str) -> Reply:
    """A reply carrying Dapr's error body."""
    body = orjson.dumps({"errorCode": code, "message": message})
    return Reply(status, Headers([("content-type", "application/json")]), body)


def interpret(reply: Message) -> tuple[Status, Reply] | None:
    """What a reply on the results topic means for its invocation; None for a skipped one."""
    if SKIPPED_KEY in reply.metadata:
        return None
    code = reply.metadata.get(ERROR_KEY)
    if code is None:
        try:
            return Status.COMPLETED, Reply.from_envelope(Envelope.decode(reply.data))
        except InvalidArgument as exc:
            return Status.FAILED, dapr_error(500, "ERR_DIRECT_INVOKE", f"unreadable reply: {exc}")
    text = reply.data.decode("utf-8", "replace")
    if code == APP_FAILED:
        try:
            raw = orjson.loads(text)
            headers = Headers((str(k), str(v)) for k, v in raw["headers"])
            return Status.FAILED, Reply(int(raw["status"]), headers, base64.b64decode(raw["body"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            pass
    return Status.FAILED, dapr_error(500, "ERR_DIRECT_INVOKE", f"{code}: {text}")


class AsyncClient:
    """Submits one app's async invocations and keeps their results."""

    def __init__(
        self,
        broker: BaseBroker,
        app_id: str,
        results: Results,
        *,
        app_caller: AppCaller | None = None,
        has_app: bool = True,
        concurrency: int = 16,
        namespace: str = "",
    ) -> None:
        self.broker = broker
        self.app_id = app_id
        self.namespace = namespace  # the sidecar's own; "" or "default" is the default one
        # Whose records these are in the result store: one app id in two namespaces is two apps.
        self.owner = qualified_id(app_id, namespace)
        self.results = results
        self.app_caller = app_caller  # set once the app channel is up; callbacks wait for it
        self.has_app = has_app
        self.options = SubscriptionOptions(
            group=app_id, concurrency=concurrency, batch_size=concurrency, retry=_RESULT_RETRY
        )
        self._subscription: Subscription | None = None

    async def start(self) -> None:
        """Record the replies arriving for this app."""
        if self._subscription is None:
            self._subscription = await self.broker.subscribe(
                results_topic(self.app_id, self.namespace), self.on_reply, self.options
            )

    async def stop(self) -> None:
        """Stop recording replies; they wait in the bus for the next sidecar of the app."""
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            await subscription.stop()

    async def submit(self, submission: Submission) -> tuple[InvocationRecord, bool]:
        """Record and submit; ``(record, True)``, or the existing invocation and False."""
        call = submission.call
        iid = invocation_id(self.owner, submission.idempotency_key)
        record = InvocationRecord(
            id=iid,
            caller=self.owner,
            callee=call.target,
            method=call.method,
            verb=call.verb,
            callback=submission.callback,
            key=submission.idempotency_key,
        )
        record, created = await self.results.create(record)
        if not created:
            return record, False
        request = replace(call, caller=self.app_id, invocation_id=iid)
        try:
            await self.broker.submit(
                async_topic(call.app_id, call.namespace),
                Message(request.to_envelope().encode(), id=iid),
                reply_to=results_topic(self.app_id, self.namespace),
                idempotency_key=iid,
            )
        except BaseException:
            try:
                await self.results.delete(self.owner, iid)
            except Exception:
                log.warning("cannot remove the record of failed submission %s", iid, exc_info=True)
            raise
        return record, True

    async def get(self, iid: str) -> InvocationRecord | None:
        """The record of one of this app's invocations."""
        return await self.results.get(self.owner, iid)

    async def list(self) -> list[InvocationRecord]:
        """This app's invocations, oldest first."""
        return await self.results.list(self.owner)

    async def cancel(self, iid: str) -> InvocationRecord | None:
        """Cancel a pending invocation; the record as it is afterwards (None if unknown)."""

        def cancelled(record: InvocationRecord) -> InvocationRecord | None:
            if record.final:
                return None
            return replace(record, status=Status.CANCELLED, finished=time.time())

        return await self.results.update(self.owner, iid, cancelled)

    async def on_reply(self, reply: Message) -> Outcome:
        """Record one reply; RETRY while its callback has not been delivered."""
        meaning = interpret(reply)
        if meaning is None:
            return Outcome.SUCCESS
        status, response = meaning
        raw_attempt = reply.metadata.get(ATTEMPT_KEY, "")
        attempts = int(raw_attempt) if raw_attempt.isdigit() else 0
        if not attempts:
            attempts = await self.results.attempts(reply.id)

        def finished(record: InvocationRecord) -> InvocationRecord | None:
            if record.final:
                return None
            return replace(
                record, status=status, response=response, finished=time.time(), attempts=attempts
            )

        record = await self.results.update(self.owner, reply.id, finished)
        if record is None:
            log.info("discarding the result of unknown or expired invocation %s", reply.id)
            return Outcome.SUCCESS
        if record.status is Status.CANCELLED or record.callback is None or record.callback_done:
            return Outcome.SUCCESS
        return await self._call_back(record)

    async def _call_back(self, record: InvocationRecord) -> Outcome:
        if not self.has_app:
            log.info("no app port: leaving the callback of %s to another sidecar", record.id)
            return Outcome.RETRY
        if self.app_caller is None or record.callback is None or record.response is None:
            return Outcome.RETRY  # the app channel is not up yet
        response = record.response
        headers = Headers(
            [
                (INVOCATION_ID_HEADER, record.id),
                (STATUS_HEADER, record.status.value),
                (HTTP_STATUS_HEADER, str(response.status)),
            ]
        )
        if (content_type := response.headers.get("content-type")) is not None:
            headers.add("content-type", content_type)
        call = Call(
            app_id=self.app_id,
            method=record.callback.lstrip("/"),
            verb="POST",
            query="",
            headers=headers,
            body=response.body,
            caller=self.app_id,
            invocation_id=record.id,
        )
        try:
            answer = await self.app_caller(call, CALLBACK_TIMEOUT)
        except Exception as exc:
            log.warning("callback %s of invocation %s failed: %s", call.method, record.id, exc)
            return Outcome.RETRY
        if not 200 <= answer.status < 300:
            log.warning(
                "callback %s of %s answered %d; retrying", call.method, record.id, answer.status
            )
            return Outcome.RETRY
        await self.results.update(self.owner, record.id, lambda r: replace(r, callback_done=True))
        return Outcome.SUCCESS
