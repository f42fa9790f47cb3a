"""The callee's side of sync invocation: serve the app's call topic, call the app, reply.

Every sidecar of an app serves :func:`~invoke.call.call_topic` of its app id and namespace in the
bus's *call* mode (one app id in two namespaces is two apps): replicas compete for calls (at most
once: a call whose server died is answered ``REDELIVERED``, never run twice), a call whose caller
gave up is skipped.  The request carries a :class:`~invoke.call.Call` envelope; the reply carries
the app's :class:`~invoke.call.Reply` envelope, whatever its status.  When the app cannot be
reached the :class:`AppUnreachable` the app caller raises becomes an error reply with code
``APP_UNREACHABLE`` and the reason, which the caller's sidecar turns into Dapr's 500
``ERR_DIRECT_INVOKE``.

Started once the app channel is up; stopped at shutdown before the channel closes.
"""

from __future__ import annotations

import logging

from bus.broker import BaseBroker, Subscription
from bus.envelope import Envelope
from bus.message import Message
from bus.options import SubscriptionOptions
from bus.rpc import RequestMode, call_ttl
from invoke.call import AppCaller, Call, call_topic

log = logging.getLogger("omnibus.invoke")

# A call's own time-to-live bounds it; this only bounds a call that carries none (in-process).
DEFAULT_CALL_TIMEOUT = 60.0
# The lease of a call in the broker: longer than any call may take, so a slow call is never
# handed to a second server (which would answer REDELIVERED while the first still works on it).
MAX_CALL_SECONDS = 3600.0
DEFAULT_CONCURRENCY = 256


class InvocationServer:
    """Serves the sync calls to one app id on the system bus through an :class:`AppCaller`."""

    def __init__(
        self,
        broker: BaseBroker,
        app_id: str,
        caller: AppCaller,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        namespace: str = "",
    ) -> None:
        self.broker = broker
        self.app_id = app_id
        self.namespace = namespace  # the sidecar's own; "" or "default" is the default one
        self.caller = caller
        self.options = SubscriptionOptions(
            group=app_id,
            concurrency=concurrency,
            batch_size=min(concurrency, 32),
            processing_timeout=MAX_CALL_SECONDS,
        )
        self._subscription: Subscription | None = None

    @property
    def topic(self) -> str:
        """The topic served."""
        return call_topic(self.app_id, self.namespace)

    async def start(self) -> None:
        """Serve the app's call topic (announced in presence at once)."""
        if self._subscription is None:
            self._subscription = await self.broker.serve(
                self.topic, self.reply, self.options, mode=RequestMode.CALL
            )
            log.info("serving invocations of %s on %s", self.app_id, self.topic)

    async def stop(self) -> None:
        """Stop taking calls; calls in flight finish within the broker's drain bound."""
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            await subscription.stop()

    async def __aenter__(self) -> InvocationServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def reply(self, request: Message) -> Message:
        """The app's reply to one call request (AppUnreachable becomes an error reply)."""
        call = Call.from_envelope(Envelope.decode(request.data))
        timeout = call_ttl(request) or DEFAULT_CALL_TIMEOUT
        reply = await self.caller(call, timeout)
        return Message(data=reply.to_envelope().encode())
