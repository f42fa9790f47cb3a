"""Opening the app's subscriptions on the buses of their pub/sub components.

Each :class:`~components.specs.SubscriptionSpec` (declarative or programmatic) becomes one
``broker.subscribe`` with the component's defaults: group = ``consumerID`` or the app id,
concurrency, queue depth, processing time-out, retry policy (a Resiliency's inbound policy when
set), and the dead-letter topic (``deadLetterTopic``, else ``<topic>.deadletter``).  A
subscription to an unknown pub/sub, or one whose routing rules do not compile, is logged and
skipped, as Dapr does, and so is one outside the component's topic scopes
(:mod:`runtime.pubsub.scopes`); the others still start.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from bus.broker import Subscription
from bus.delivery import Handler
from bus.errors import ConfigError, InvalidArgument
from bus.options import SubscriptionOptions
from components.specs import SubscriptionSpec
from runtime.api.dapr_errors import ApiError
from runtime.channel import AppChannel
from runtime.pubsub.app_delivery import EventHandler, EventPreparer
from runtime.pubsub.bulk_delivery import BulkHandler
from runtime.pubsub.components import PubSubComponent, PubSubs
from runtime.pubsub.routing import Router

log = logging.getLogger("omnibus.runtime")


def unique_subscriptions(specs: Sequence[SubscriptionSpec]) -> list[SubscriptionSpec]:
    """``specs`` without a second subscription to the same pubsub and topic (the first wins).

    Two subscriptions of one app to one topic would share the app's consumer group and so split
    the messages between them; Dapr refuses the duplicate too.
    """
    seen: dict[tuple[str, str], SubscriptionSpec] = {}
    for spec in specs:
        key = (spec.pubsubname, spec.topic)
        first = seen.setdefault(key, spec)
        if first is not spec:
            log.error(
                "ignoring the %s subscription to %s/%s: the %s one already subscribes to it",
                spec.type.lower(),
                spec.pubsubname,
                spec.topic,
                first.type.lower(),
            )
    return list(seen.values())


def subscription_options(
    spec: SubscriptionSpec, component: PubSubComponent, app_id: str
) -> SubscriptionOptions:
    """The bus options of ``spec`` on ``component``."""
    defaults = component.defaults
    concurrency, batch_size = defaults.concurrency, defaults.batch_size
    if spec.bulk.enabled:
        # A batch only fills up if that many handlers may wait at once; twice that lets the next
        # batch fill while the app handles the one before, instead of fetching nothing meanwhile.
        concurrency = max(concurrency, 2 * spec.bulk.max_messages)
        batch_size = max(batch_size, spec.bulk.max_messages)
    return SubscriptionOptions(
        group=defaults.group or app_id,
        concurrency=concurrency,
        batch_size=batch_size,
        processing_timeout=defaults.processing_timeout,
        retry=defaults.retry,
        dead_letter_topic=spec.dead_letter_topic,
    )


def make_handler(spec: SubscriptionSpec, channel: AppChannel) -> Handler:
    """The bus handler delivering ``spec``'s events to the app (one by one, or in bulk)."""
    router = Router(spec.routes, where=spec.source or f"subscription to {spec.topic}")
    preparer = EventPreparer(spec, router)
    if spec.bulk.enabled:
        return BulkHandler(preparer, channel)
    return EventHandler(preparer, channel)


async def open_subscriptions(
    specs: Sequence[SubscriptionSpec], pubsubs: PubSubs, channel: AppChannel, app_id: str
) -> list[Subscription]:
    """Subscribe every spec; returns the running subscriptions."""
    running: list[Subscription] = []
    for spec in specs:
        try:
            component = pubsubs.get(spec.pubsubname)
            if not pubsubs.scopes(spec.pubsubname).can_subscribe(spec.topic):
                raise ConfigError("the pubsub's subscriptionScopes do not allow it")
            handler = make_handler(spec, channel)
            options = subscription_options(spec, component, app_id)
            subscription = await component.broker.subscribe(spec.topic, handler, options)
        except (ApiError, ConfigError, InvalidArgument) as exc:
            message = exc.message if isinstance(exc, ApiError) else str(exc)
            log.error("not subscribing to %s/%s: %s", spec.pubsubname or "-", spec.topic, message)
            continue
        log.info(
            "subscribed to %s/%s (%s, group %s)",
            spec.pubsubname,
            spec.topic,
            spec.type.lower(),
            options.group,
        )
        running.append(subscription)
    return running
