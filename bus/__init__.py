"""omnibus's at-least-once bus: the public surface others import.

The backends are subpackages imported on demand (``bus.memory.MemoryBroker``,
``bus.sqlite.SqliteBroker``, ``bus.redis.RedisBroker``, ``bus.rabbitmq.RabbitBroker``), so that
importing the bus loads no client library; each backend's storage layout is in its package
docstring.  Everything not named here is internal to the bus.
"""

from bus.backoff import Backoff
from bus.broker import BaseBroker, Broker, Subscription
from bus.envelope import Envelope, Headers
from bus.errors import (
    BrokerClosed,
    BrokerError,
    BrokerUnavailable,
    ConfigError,
    InvalidArgument,
    InvalidName,
    NoResponders,
    OmnibusError,
    PublishError,
    RemoteError,
    ReplyLost,
    RequestError,
    RequestTimeout,
)
from bus.message import Message, Outcome
from bus.options import RetryPolicy, SubscriptionOptions, parse_bool, parse_duration
from bus.presence import APP, SERVICE, Presence
from bus.rpc import Replies, RequestMode

__all__ = [
    "APP",
    "SERVICE",
    "Backoff",
    "BaseBroker",
    "Broker",
    "BrokerClosed",
    "BrokerError",
    "BrokerUnavailable",
    "ConfigError",
    "Envelope",
    "Headers",
    "InvalidArgument",
    "InvalidName",
    "Message",
    "NoResponders",
    "OmnibusError",
    "Outcome",
    "Presence",
    "PublishError",
    "RemoteError",
    "Replies",
    "ReplyLost",
    "RequestError",
    "RequestMode",
    "RequestTimeout",
    "RetryPolicy",
    "Subscription",
    "SubscriptionOptions",
    "parse_bool",
    "parse_duration",
]
