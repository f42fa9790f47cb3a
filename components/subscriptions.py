"""The body of a subscription, shared by ``kind: Subscription`` files and ``GET /dapr/subscribe``.

Both use Dapr's field names: ``pubsubname``, ``topic``, ``route`` (v1) or
``routes: {rules: [{match, path}], default}`` (v2; ``routes.default`` wins over ``route``),
``deadLetterTopic``, ``metadata`` (string values), and
``bulkSubscribe: {enabled, maxMessagesCount, maxAwaitDurationMs}``.  Paths get a leading ``/``
when they lack one; a rule with an empty ``match`` always matches, as in Dapr.  Read from
``GET /dapr/subscribe``, the names match in any case, as Go's JSON decoder matches them
(:class:`~components.fields.Field` with ``go_json``).
"""

from __future__ import annotations

from collections.abc import Callable
from types import MappingProxyType

from bus.message import validate_name, validate_topic
from components.fields import Field
from components.specs import (
    BulkSubscribe,
    RouteRule,
    Routes,
    SubscriptionSpec,
    SubscriptionType,
)

TOPIC_EXPECTED = "a topic name (up to 200 of A-Z a-z 0-9 _ . : / -)"
NAME_EXPECTED = "a name (up to 128 of A-Z a-z 0-9 _ . -)"


def parse_subscription(
    spec: Field,
    *,
    kind: SubscriptionType,
    name: str = "",
    scopes: tuple[str, ...] = (),
    metadata_value: Callable[[Field], str] | None = None,
) -> SubscriptionSpec:
    """A :class:`SubscriptionSpec` from the mapping ``spec`` (a file's ``spec`` or a JSON entry)."""
    spec.mapping()  # a non-mapping fails here, with its path
    return SubscriptionSpec(
        pubsubname=spec.child("pubsubname").check(
            lambda v: validate_name(v, "pubsub name"), NAME_EXPECTED
        ),
        topic=spec.child("topic").check(validate_topic, TOPIC_EXPECTED),
        routes=parse_routes(spec),
        dead_letter_topic=_dead_letter(spec.child("deadLetterTopic")),
        metadata=MappingProxyType(spec.child("metadata").string_map(metadata_value)),
        bulk=parse_bulk(spec.child("bulkSubscribe")),
        scopes=scopes,
        type=kind,
        name=name,
        source=spec.source,
    )


def parse_routes(spec: Field) -> Routes:
    """``routes.rules`` in order and the default path (``routes.default``, else ``route``)."""
    routes = spec.child("routes")
    rules = tuple(_rule(rule) for rule in routes.child("rules").list())
    default = _path(routes.child("default")) or _path(spec.child("route"))
    return Routes(rules=rules, default=default)


def parse_bulk(bulk: Field) -> BulkSubscribe:
    """Dapr's ``bulkSubscribe`` block; defaults 100 messages / 1000 ms when enabled."""
    defaults = BulkSubscribe()
    return BulkSubscribe(
        enabled=bulk.child("enabled").boolean(defaults.enabled),
        max_messages=bulk.child("maxMessagesCount").integer(defaults.max_messages, minimum=1),
        max_await_ms=bulk.child("maxAwaitDurationMs").integer(defaults.max_await_ms, minimum=0),
    )


def has_path(subscription: SubscriptionSpec) -> bool:
    """True when at least one event could be delivered somewhere."""
    return bool(subscription.routes.rules) or subscription.routes.default is not None


def _rule(rule: Field) -> RouteRule:
    match = rule.child("match")
    expression = match.string() if match.present and match.value != "" else ""
    path = _path(rule.child("path"))
    if path is None:
        raise rule.child("path").fail("the app path the rule routes to")
    return RouteRule(match=expression, path=path)


def _path(field: Field) -> str | None:
    text = field.optional_string()
    if text is None:
        return None
    return text if text.startswith("/") else "/" + text


def _dead_letter(field: Field) -> str | None:
    if field.optional_string() is None:
        return None
    return field.check(validate_topic, TOPIC_EXPECTED)
