"""The change feed: every committed change of a store published as a CloudEvent (beyond Dapr).

Turned on by the store component's metadata, either pair of names:

    changeFeedPubsub / changeFeedTopic          omnibus's names
    outboxPublishPubsub / outboxPublishTopic    Dapr's outbox names (same behaviour here)

The pubsub must be a component of the sidecar that serves the store.  Each change is one event
on that topic, ``type`` :data:`CHANGE_EVENT_TYPE`, ``source`` the serving app, ``subject`` the key,
``data`` = ``{"store", "key", "appId", "operation": "upsert"|"delete", "etag", "value"}``
(``value`` only on upserts: the JSON value, or ``valueBase64`` for bytes that are not JSON;
``key`` is the app's key, ``appId`` the app that made the change).  Expiry is not reported.

Guarantee: at least once, after commit.  The serving sidecar publishes the events of a change
(one batch per request, in the order of its operations) after the store committed it and before
it answers; a publish returns only once the pubsub holds the events durably.  So every change a
caller saw succeed (2xx) has its events on the topic.  If the publish fails, or the sidecar dies
between the commit and the publish, the caller gets an error (500, or a broken connection) for a
change that is committed: its retry commits again and publishes, so a retrying caller loses no
event but a subscriber may see one twice (de-duplicate on key and etag).  A caller that gives up
after such an error leaves a change without an event.  The state change and its event are not
committed in one transaction, even when store and bus share one SQLite file.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import orjson

from bus.errors import ConfigError
from bus.message import Message

CHANGE_EVENT_TYPE = "com.omnibus.state.changed"
_NAMES = (("changeFeedPubsub", "changeFeedTopic"), ("outboxPublishPubsub", "outboxPublishTopic"))


class Publisher(Protocol):
    """Where events go: a pubsub component's broker."""

    async def publish(self, topic: str, batch: Sequence[Message]) -> None: ...


@dataclass(frozen=True, slots=True)
class FeedSettings:
    """The pubsub and topic that receive a store's changes."""

    pubsub: str
    topic: str

    @classmethod
    def from_metadata(cls, store: str, metadata: Mapping[str, str]) -> FeedSettings | None:
        """The feed a component's metadata asks for, None without; ConfigError if half set."""
        lowered = {name.lower(): value.strip() for name, value in metadata.items()}
        for pubsub_name, topic_name in _NAMES:
            pubsub = lowered.get(pubsub_name.lower(), "")
            topic = lowered.get(topic_name.lower(), "")
            if pubsub and topic:
                return cls(pubsub, topic)
            if pubsub or topic:
                missing = topic_name if pubsub else pubsub_name
                raise ConfigError(
                    f"component {store!r}: metadata {missing!r}: expected a value "
                    f"(set both {pubsub_name!r} and {topic_name!r}, or neither)"
                )
        return None


@dataclass(frozen=True, slots=True)
class Change:
    """One committed change, as the feed reports it."""

    operation: Literal["upsert", "delete"]
    key: str
    app_id: str
    etag: str | None = None
    value: bytes | None = None


class ChangeFeed:
    """Publishes the changes of one store to its feed topic."""

    def __init__(
        self, store: str, settings: FeedSettings, publisher: Publisher, *, source: str
    ) -> None:
        self.store = store
        self.settings = settings
        self._publisher = publisher
        self._source = source

    async def publish(self, changes: Sequence[Change]) -> None:
        """Publish ``changes`` as one batch; returns once the pubsub holds them durably."""
        if not changes:
            return
        now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        batch = [self._message(change, now) for change in changes]
        await self._publisher.publish(self.settings.topic, batch)

    def _message(self, change: Change, now: str) -> Message:
        event_id = str(uuid.uuid4())
        event = {
            "id": event_id,
            "specversion": "1.0",
            "source": self._source,
            "type": CHANGE_EVENT_TYPE,
            "datacontenttype": "application/json",
            "topic": self.settings.topic,
            "pubsubname": self.settings.pubsub,
            "subject": change.key,
            "time": now,
            "data": self._data(change),
        }
        return Message(data=orjson.dumps(event), id=event_id)

    def _data(self, change: Change) -> dict[str, Any]:
        data: dict[str, Any] = {
            "store": self.store,
            "key": change.key,
            "appId": change.app_id,
            "operation": change.operation,
            "etag": change.etag,
        }
        if change.value is not None:
            try:
                data["value"] = orjson.loads(change.value)
            except orjson.JSONDecodeError:
                data["valueBase64"] = base64.b64encode(change.value).decode()
        return data
