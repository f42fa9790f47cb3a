"""The one exception tree of omnibus.

Every error omnibus raises derives from :class:`OmnibusError`; errors of the libraries underneath
(sqlite3, redis-py, aio-pika) are translated at the edge with ``raise ... from exc``.  The HTTP
layer maps this tree to Dapr's status codes and error codes in one place.

    OmnibusError
    ├── InvalidArgument            a caller passed a value omnibus cannot accept
    │   └── InvalidName            an empty or malformed topic, group, app id or key
    ├── ConfigError                a component, subscription or option is wrong
    ├── BrokerError                the broker failed to do what was asked
    │   ├── BrokerUnavailable      the connection is down; the operation may be retried
    │   ├── PublishError           a publish was not confirmed durable
    │   └── BrokerClosed           the broker was used after close()
    └── RequestError               request/reply over the bus failed
        ├── NoResponders           no live instance serves the topic
        ├── RequestTimeout         no reply arrived within the time-out
        ├── ReplyLost              the inbox lost its connection while the reply was due
        └── RemoteError            the server answered with an error reply (``code``, ``message``)
"""

from __future__ import annotations


class OmnibusError(Exception):
    """Root of every error raised by omnibus."""


class InvalidArgument(OmnibusError, ValueError):
    """A caller passed a value omnibus cannot accept."""


class InvalidName(InvalidArgument):
    """An empty or malformed topic, group, app id or key."""


class ConfigError(OmnibusError):
    """A component, subscription or option is wrong; the message says where and what is expected."""


class BrokerError(OmnibusError):
    """The broker failed to do what was asked."""


class BrokerUnavailable(BrokerError):
    """The connection to the broker is down; the operation may be retried."""


class PublishError(BrokerError):
    """A publish was not confirmed durable by the broker."""


class BrokerClosed(BrokerError):
    """The broker (or one of its subscriptions) was used after it was closed."""


class RequestError(OmnibusError):
    """Request/reply over the bus failed."""


class NoResponders(RequestError):
    """No live instance serves the requested topic."""


class RequestTimeout(RequestError, TimeoutError):
    """No reply arrived within the time-out."""


class ReplyLost(RequestError):
    """The caller's inbox lost its connection while a reply was due; the reply may be gone."""


class RemoteError(RequestError):
    """The server of a request answered with an error reply.

    ``code`` is the server's machine-readable code (``INTERNAL``, ``REDELIVERED``, or the
    ``code`` of the exception the replier raised) so the caller can map it to a status of its own.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
