"""CloudEvents 1.0 envelopes as Dapr builds them (components-contrib ``pubsub/envelope.go``).

A publish wraps the payload in an envelope: ``id`` (uuid), ``source`` (the app id), ``type``
``com.dapr.event.sent``, ``specversion`` 1.0, ``datacontenttype``, ``topic``, ``pubsubname``,
``time`` (RFC 3339), ``traceid``/``traceparent``/``tracestate``, ``subject`` and ``expiration`` when
asked.  JSON payloads are embedded as JSON (their bytes as sent, not re-serialized), binary ones as
``data_base64``, anything else as a ``data`` string.  A text payload that is not valid UTF-8 also
goes to ``data_base64`` so that no byte is lost (Dapr would mangle it).

Used by the sidecar's publish API and by ``omnibus publish``.
"""

from __future__ import annotations

import base64
import functools
import json
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from bus.message import new_uuid
from runtime.api.body import MalformedBody, NestedTooDeep, parse_json
from runtime.api.dapr_errors import CloudEventError, RequestMetadataError

CLOUDEVENT_CONTENT_TYPE = "application/cloudevents+json"
EVENT_TYPE = "com.dapr.event.sent"
BULK_EVENT_TYPE = "com.dapr.event.sent.bulk"
SPEC_VERSION = "1.0"
DEFAULT_CONTENT_TYPE = "text/plain"
RAW_CONTENT_TYPE = "application/octet-stream"
MAX_TTL_SECONDS = 100 * 365 * 24 * 3600

_BINARY_TYPES = frozenset(
    {"application/octet-stream", "application/x-protobuf", "application/protobuf"}
)


def media_type(content_type: str | None) -> str:
    """``application/json`` from ``Application/JSON; charset=utf-8``."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def is_cloudevent_type(content_type: str | None) -> bool:
    """True for ``application/cloudevents+json``: the caller sends its own envelope."""
    return media_type(content_type) == CLOUDEVENT_CONTENT_TYPE


def is_json_type(content_type: str | None) -> bool:
    """True for ``application/json`` and every ``+json`` type."""
    media = media_type(content_type)
    return media == "application/json" or media.endswith("+json")


def is_binary_type(content_type: str | None) -> bool:
    """True for content Dapr carries as ``data_base64``."""
    return media_type(content_type) in _BINARY_TYPES


def rfc3339(moment: datetime) -> str:
    """``2024-05-01T12:00:00Z``: the second-precision UTC form Dapr writes."""
    return _format_second(int(moment.timestamp()))


@functools.lru_cache(maxsize=64)
def _format_second(second: int) -> str:
    # Every publish stamps "now": formatting each second once keeps strftime off the hot path.
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second))


def new_event_id() -> str:
    """A random (version 4) UUID in its 36-character form, as Dapr gives each event.

    From the process's seeded PRNG (reseeded in a forked child), not ``uuid.uuid4``'s read of
    ``os.urandom``: an event id must be unique, not secret, and every publish makes one.
    """
    return new_uuid()


def new_traceparent() -> str:
    """A fresh W3C trace context for a publish that came without one.

    Trace ids need uniqueness, not secrecy: the process's seeded PRNG, no system call.
    """
    return f"00-{random.getrandbits(128):032x}-{random.getrandbits(64):016x}-01"


@dataclass(frozen=True, slots=True)
class EventAttributes:
    """What a publish request says about its envelope: ``metadata.cloudevent.*``, TTL, trace."""

    id: str | None = None
    source: str | None = None
    type: str | None = None
    subject: str | None = None
    traceparent: str | None = None
    traceid: str | None = None
    tracestate: str | None = None
    ttl_seconds: int | None = None

    @classmethod
    def from_metadata(
        cls, metadata: Mapping[str, str], traceparent: str | None, tracestate: str | None
    ) -> EventAttributes:
        """Read ``cloudevent.*`` and ``ttlInSeconds`` metadata; headers give the trace context."""

        def get(key: str) -> str | None:
            return metadata.get(f"cloudevent.{key}") or None

        return cls(
            id=get("id"),
            source=get("source"),
            type=get("type"),
            subject=get("subject"),
            traceparent=get("traceparent") or traceparent,
            traceid=get("traceid"),
            tracestate=get("tracestate") or tracestate,
            ttl_seconds=parse_ttl(metadata.get("ttlInSeconds")),
        )


def parse_ttl(value: str | None) -> int | None:
    """Seconds from ``ttlInSeconds``; None when absent."""
    if value is None or value == "":
        return None
    try:
        ttl = int(value)
    except ValueError:
        raise RequestMetadataError(f"ttlInSeconds: {value!r} is not an integer") from None
    if ttl < 0:
        raise RequestMetadataError(f"ttlInSeconds: {ttl} must not be negative")
    if ttl > MAX_TTL_SECONDS:  # an expiration past what a timestamp holds is no expiration
        raise RequestMetadataError(f"ttlInSeconds: {ttl} exceeds {MAX_TTL_SECONDS} (100 years)")
    return ttl


def _data_field(data: bytes, content_type: str, json_checked: bool) -> tuple[str, Any]:
    if is_json_type(content_type):
        if json_checked:
            return "data", orjson.Fragment(data)
        try:
            # Too deep is refused (NestedTooDeep: 400): the subscriber could not read it back.
            parse_json(data, what="the JSON payload")
        except NestedTooDeep:
            raise
        except MalformedBody:
            try:  # orjson refuses integers beyond 64 bits, which are still valid JSON
                json.loads(data)
            except (ValueError, RecursionError):  # the stdlib recurses: deep garbage is text
                return _text_field(data)
        return "data", orjson.Fragment(data)
    if is_binary_type(content_type):
        return "data_base64", base64.b64encode(data).decode("ascii")
    return _text_field(data)


def _text_field(data: bytes) -> tuple[str, Any]:
    try:
        return "data", data.decode("utf-8")
    except UnicodeDecodeError:
        return "data_base64", base64.b64encode(data).decode("ascii")


def _apply(envelope: dict[str, Any], attrs: EventAttributes, now: datetime) -> None:
    """Overrides from ``cloudevent.*`` metadata, then the expiration of a TTL."""
    for key in ("id", "source", "type", "subject", "tracestate"):
        value = getattr(attrs, key)
        if value is not None:
            envelope[key] = value
    if attrs.traceparent is not None:
        envelope["traceparent"] = attrs.traceparent
        envelope["traceid"] = attrs.traceid or attrs.traceparent
    elif attrs.traceid is not None:
        envelope["traceid"] = attrs.traceid
    if attrs.ttl_seconds is not None:
        envelope["expiration"] = rfc3339(now + timedelta(seconds=attrs.ttl_seconds))


def new_envelope(
    data: bytes,
    content_type: str | None,
    *,
    topic: str,
    pubsubname: str,
    source: str,
    attrs: EventAttributes | None = None,
    now: datetime | None = None,
    json_checked: bool = False,
) -> tuple[str, bytes]:
    """Wrap ``data`` in a Dapr CloudEvent; returns (event id, envelope bytes).

    ``json_checked``: ``data`` is known to be valid JSON (serialized by us), not parsed again.
    """
    attrs = attrs or EventAttributes()
    now = now or datetime.now(UTC)
    content_type = content_type or DEFAULT_CONTENT_TYPE
    traceparent = attrs.traceparent or new_traceparent()
    envelope: dict[str, Any] = {
        "id": new_event_id(),
        "source": source,
        "type": EVENT_TYPE,
        "specversion": SPEC_VERSION,
        "datacontenttype": content_type,
        "topic": topic,
        "pubsubname": pubsubname,
        "time": rfc3339(now),
        "traceid": traceparent,
        "traceparent": traceparent,
        "tracestate": attrs.tracestate or "",
    }
    _apply(envelope, attrs, now)
    field, value = _data_field(data, content_type, json_checked)
    envelope[field] = value
    return str(envelope["id"]), orjson.dumps(envelope)


def from_cloudevent(
    body: bytes,
    *,
    topic: str,
    pubsubname: str,
    source: str,
    attrs: EventAttributes | None = None,
    now: datetime | None = None,
) -> tuple[str, bytes]:
    """Complete a caller's own CloudEvent: topic and pubsubname overwritten, gaps filled."""
    attrs = attrs or EventAttributes()
    now = now or datetime.now(UTC)
    try:
        envelope = parse_json(body, what="the CloudEvent")
    except NestedTooDeep:
        raise
    except MalformedBody as exc:
        raise CloudEventError(f"cannot create cloudevent: {exc}") from None
    if not isinstance(envelope, dict):
        raise CloudEventError("cannot create cloudevent: the body must be a JSON object")
    envelope["topic"] = topic
    envelope["pubsubname"] = pubsubname
    traceparent = attrs.traceparent or new_traceparent()
    defaults = {
        "id": new_event_id(),
        "source": source,
        "type": EVENT_TYPE,
        "specversion": SPEC_VERSION,
        "time": rfc3339(now),
        "traceid": traceparent,
        "traceparent": traceparent,
        "tracestate": attrs.tracestate or "",
    }
    for key, value in defaults.items():
        if envelope.get(key) in (None, ""):
            envelope[key] = value
    _apply(envelope, attrs, now)
    return str(envelope["id"]), orjson.dumps(envelope)


def raw_envelope(
    data: bytes, *, event_id: str, topic: str, pubsubname: str, metadata: Mapping[str, str]
) -> dict[str, Any]:
    """The envelope a rawPayload subscription gets: the published bytes as ``data_base64``.

    As Dapr's ``FromRawPayload``, except that ``id`` is the bus message id, stable across
    redeliveries, where Dapr makes a random one.
    """
    envelope: dict[str, Any] = {
        "id": event_id,
        "specversion": SPEC_VERSION,
        "datacontenttype": RAW_CONTENT_TYPE,
        "source": "Unknown",
        "type": EVENT_TYPE,
        "topic": topic,
        "pubsubname": pubsubname,
        "data_base64": base64.b64encode(data).decode("ascii"),
    }
    for key in ("traceid", "traceparent", "tracestate"):
        if key in metadata:
            envelope[key] = metadata[key]
    if "traceparent" in metadata:
        envelope["traceid"] = metadata["traceparent"]
    return envelope


def has_expired(envelope: Mapping[str, Any], now: datetime | None = None) -> bool:
    """True when the envelope's ``expiration`` lies in the past; unreadable ones never expire."""
    expiration = envelope.get("expiration")
    if not isinstance(expiration, str) or not expiration:
        return False
    try:
        moment = datetime.fromisoformat(expiration)
    except ValueError:
        return False
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment < (now or datetime.now(UTC))
