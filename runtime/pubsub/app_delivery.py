"""Delivering bus messages to the app, one event per POST, as Dapr does.

For each message: read the envelope (only as far as needed), drop it if its TTL expired, pick the
route (CEL rules, first match, else the default), POST the envelope as
``application/cloudevents+json`` with the message metadata, ``pubsubName`` and ``traceparent`` as
headers, and map the app's answer to an :class:`~bus.message.Outcome` exactly as Dapr does:

====================================================  ==========
app answer                                            outcome
====================================================  ==========
2xx, empty or unparsable body, no/empty ``status``    SUCCESS
2xx ``{"status": "SUCCESS"}``                         SUCCESS
2xx ``{"status": "DROP"}``                            DROP (dead-letter topic)
2xx ``{"status": "RETRY"}`` or any other status       RETRY
404                                                   DROP (dead-letter topic)
any other status, connection error, time-out          RETRY
====================================================  ==========

An expired event, or one that no route matches, is logged and acked; when the subscription names
a ``deadLetterTopic`` it goes there instead (DROP), as in Dapr.  A routing rule that fails to
evaluate is a RETRY.  rawPayload subscriptions get Dapr's synthetic envelope (``data_base64``,
``application/octet-stream``); a message that is not a JSON object (published with rawPayload) is
given that envelope too, so that a CloudEvent subscriber still receives it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from bus.message import Message, Outcome
from components.specs import SubscriptionSpec
from runtime.api.body import field
from runtime.channel import AppChannel, AppUnavailable, is_hop_by_hop
from runtime.pubsub.cloudevents import CLOUDEVENT_CONTENT_TYPE, has_expired, raw_envelope
from runtime.pubsub.routing import Router, RoutingError

log = logging.getLogger("omnibus.runtime")

_STATUSES = {"": Outcome.SUCCESS, "SUCCESS": Outcome.SUCCESS, "DROP": Outcome.DROP}
_TRACEPARENT = re.compile(rb'"traceparent"\s*:\s*"([^"\\]*)"')
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*")  # what every HTTP stack accepts as is


# Headers of a delivery that are the sidecar's to write (besides the hop-by-hop ones).
_SIDECAR_HEADERS = frozenset({"content-type", "traceparent", "pubsubname"})


def _reserved(lowered: str) -> bool:
    return lowered in _SIDECAR_HEADERS or is_hop_by_hop(lowered)


def outcome_of(status: int, body: bytes) -> Outcome:
    """The outcome of one delivery from the app's status and body (see the table above)."""
    if status == 404:
        return Outcome.DROP
    if not 200 <= status < 300:
        return Outcome.RETRY
    try:
        reply = orjson.loads(body) if body.strip() else None
    except orjson.JSONDecodeError:
        return Outcome.SUCCESS
    if not isinstance(reply, dict):
        return Outcome.SUCCESS
    value = field(reply, "status")  # Dapr reads the answer with Go's case-insensitive match
    if value is None:
        return Outcome.SUCCESS
    return _STATUSES.get(value, Outcome.RETRY) if isinstance(value, str) else Outcome.RETRY


@dataclass(frozen=True, slots=True)
class Prepared:
    """A message ready to POST: its route, the envelope bytes, the headers."""

    path: str
    event: bytes
    headers: Mapping[str, str]


def message_headers(message: Message, pubsubname: str, traceparent: str | None) -> dict[str, str]:
    """The message metadata as HTTP headers, plus ``pubsubName`` and ``traceparent``.

    The publisher chooses the metadata, so none of it may frame the request or steer the
    connection (``Content-Length``, ``Transfer-Encoding``, ``Host``, hop-by-hop headers, which
    would let it smuggle a second request into the app's kept-alive connection), nor stand in
    for a header the sidecar writes (``Content-Type``, ``traceparent``, ``pubsubName``,
    ``dapr-api-token``).  Metadata that cannot travel as a header (a name with spaces, a value
    with line breaks or non-ASCII text) is left out too, rather than failing the delivery.
    """
    headers = {
        key: value
        for key, value in message.metadata.items()
        if _HEADER_NAME.fullmatch(key)
        and _HEADER_VALUE.fullmatch(value)
        and not _reserved(key.lower())
    }
    headers["pubsubName"] = pubsubname
    if traceparent and _HEADER_VALUE.fullmatch(traceparent):  # the publisher's: it may be anything
        headers["traceparent"] = traceparent
    return headers


class EventPreparer:
    """The per-subscription part of delivery that comes before the POST."""

    def __init__(self, spec: SubscriptionSpec, router: Router) -> None:
        self.spec = spec
        self.router = router
        self._raw = spec.raw_payload
        # Without rules and without an expiration, the envelope need not be parsed at all.
        self._needs_event = router.has_rules

    def prepare(self, message: Message) -> Prepared | Outcome:
        """The POST to make for ``message``, or the outcome when nothing is to be posted."""
        spec = self.spec
        event: Mapping[str, Any] | None = None
        data = message.data
        if self._raw or not (data[:1] == b"{" or data.lstrip().startswith(b"{")):
            event = self._raw_event(message)
            data = orjson.dumps(event)
        elif self._needs_event or b'"expiration"' in data:
            try:
                event = orjson.loads(data)
            except orjson.JSONDecodeError:
                event = self._raw_event(message)
                data = orjson.dumps(event)
        if event is not None and has_expired(event):
            log.warning("dropping expired event %s of topic %s", message.id, spec.topic)
            return self._dropped()
        try:
            path = self.router.route(event) if event is not None else self.router.default
        except RoutingError as exc:
            log.error("routing event %s of topic %s failed: %s", message.id, spec.topic, exc)
            return Outcome.RETRY
        if path is None:
            log.warning("no route matches event %s of topic %s", message.id, spec.topic)
            return self._dropped()
        traceparent = event.get("traceparent") if event is not None else _traceparent(data)
        headers = message_headers(
            message, spec.pubsubname, traceparent if isinstance(traceparent, str) else None
        )
        return Prepared(path, data, headers)

    def _raw_event(self, message: Message) -> dict[str, Any]:
        return raw_envelope(
            message.data,
            event_id=message.id,
            topic=self.spec.topic,
            pubsubname=self.spec.pubsubname,
            metadata=message.metadata,
        )

    def _dropped(self) -> Outcome:
        # Dapr acks what it drops, and dead-letters it only when the subscription names a topic.
        return Outcome.DROP if self.spec.dead_letter_topic else Outcome.SUCCESS


def _traceparent(data: bytes) -> str | None:
    match = _TRACEPARENT.search(data)
    return match.group(1).decode() if match else None


class EventHandler:
    """The bus handler of a subscription that receives one event per POST."""

    def __init__(self, preparer: EventPreparer, channel: AppChannel) -> None:
        self._preparer = preparer
        self._channel = channel
        self._topic = preparer.spec.topic

    async def __call__(self, message: Message) -> Outcome:
        prepared = self._preparer.prepare(message)
        if isinstance(prepared, Outcome):
            return prepared
        headers = {**prepared.headers, "Content-Type": CLOUDEVENT_CONTENT_TYPE}
        try:
            status, body = await self._channel.post(prepared.path, prepared.event, headers)
        except AppUnavailable as exc:
            log.warning("delivering %s of %s failed: %s", message.id, self._topic, exc)
            return Outcome.RETRY
        outcome = outcome_of(status, body)
        if status == 404:
            log.error("app answered 404 for %s of %s; dropping it", message.id, self._topic)
        elif outcome is not Outcome.SUCCESS:
            log.info("app answered %s for %s of %s", outcome.name, message.id, self._topic)
        return outcome
