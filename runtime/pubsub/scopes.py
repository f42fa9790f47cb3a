"""Pub/sub topic scoping, as Dapr reads it from a pubsub component's metadata.

- ``publishingScopes`` / ``subscriptionScopes``: ``app1=topic1;app2=topic2,topic3;app3=``.  An
  app listed may use only its topics (``app3=``: none); an app not listed may use every topic.
- ``allowedTopics``: ``topic1,topic2``: no app may use any other topic.
- ``protectedTopics``: ``topic1``: only apps that list the topic in their scope may use it.

A publish outside the scopes answers 403 ``ERR_PUBSUB_FORBIDDEN``; a subscription outside them
is not opened (logged), as in Dapr.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


def _topics(value: str) -> frozenset[str]:
    return frozenset(t.strip() for t in value.split(",") if t.strip())


def _scoped(value: str, app_id: str) -> frozenset[str] | None:
    """The topics ``value`` grants ``app_id``; None when the app is not listed."""
    for part in value.split(";"):
        app, sep, topics = part.partition("=")
        if sep and app.strip() == app_id:
            return _topics(topics)
    return None


@dataclass(frozen=True, slots=True)
class TopicScopes:
    """What one app may do with the topics of one pubsub component."""

    allowed: frozenset[str] | None = None  # None: every topic
    protected: frozenset[str] = frozenset()
    publishing: frozenset[str] | None = None  # None: the app is not listed
    subscribing: frozenset[str] | None = None

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str], app_id: str) -> TopicScopes:
        """Read the four scoping keys of a component's metadata for ``app_id``."""
        allowed = metadata.get("allowedTopics", "")
        return cls(
            allowed=_topics(allowed) if allowed.strip() else None,
            protected=_topics(metadata.get("protectedTopics", "")),
            publishing=_scoped(metadata.get("publishingScopes", ""), app_id),
            subscribing=_scoped(metadata.get("subscriptionScopes", ""), app_id),
        )

    def can_publish(self, topic: str) -> bool:
        """True if the app may publish to ``topic``."""
        return self._allows(topic, self.publishing)

    def can_subscribe(self, topic: str) -> bool:
        """True if the app may subscribe to ``topic``."""
        return self._allows(topic, self.subscribing)

    def _allows(self, topic: str, scoped: frozenset[str] | None) -> bool:
        if self.allowed is not None and topic not in self.allowed:
            return False
        if scoped is None:
            return topic not in self.protected
        return topic in scoped


OPEN = TopicScopes()
