"""One service invocation and its reply, as values that travel on the bus.

An invocation is a request/reply message on the topic of the callee's app id
(:func:`call_topic` for sync calls in call mode, :func:`async_topic` for async ones in durable
mode: one topic served in both modes would deliver each request to both groups).  The request
envelope carries the HTTP request of the caller (verb, raw path, raw query, headers, body); the
reply envelope carries the app's response verbatim.  Nothing here speaks HTTP.

Envelope attributes of a :class:`Call` (the storage layout of an invocation on the wire):

    app      the callee's app id
    method   the path after ``/method/``, raw (percent-encoding kept), no leading slash
    verb     the HTTP method, upper case
    query    the raw query string without ``?`` (may be empty)
    caller   the caller's app id
    iid      the invocation id of an async invocation (absent on sync calls)
    ns       the callee's namespace (absent for the default namespace)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from bus.envelope import Envelope, Headers
from bus.errors import InvalidArgument, InvalidName
from bus.message import validate_name

CALL_TOPIC_PREFIX = "omnibus.invoke."
ASYNC_TOPIC_PREFIX = "omnibus.invoke-async."


DEFAULT_NAMESPACE = "default"


def is_default_namespace(namespace: str) -> bool:
    """True for the default namespace, written ``default`` or left empty."""
    return not namespace or namespace == DEFAULT_NAMESPACE


def qualified_id(app_id: str, namespace: str) -> str:
    """``app_id`` as topics name it: ``<namespace>/<app_id>``, or the bare app id in the default
    namespace (so topics stay those of a sidecar that never heard of namespaces); ``/``
    cannot occur in an app id or a namespace."""
    if is_default_namespace(namespace):
        return app_id
    return f"{namespace}/{app_id}"


def same_namespace(a: str, b: str) -> bool:
    """True when ``a`` and ``b`` name one namespace ("" is the default one)."""
    return (a or DEFAULT_NAMESPACE) == (b or DEFAULT_NAMESPACE)


def validate_own_app_id(app_id: object) -> str:
    """A sidecar's own app id: a valid name without dots, else :class:`InvalidName`.

    In an invocation target a dot separates the app id from the namespace
    (``app.namespace``), so a dotted app id could never be called; Dapr's self-hosted sidecar
    refuses one at start-up for the same reason.
    """
    name = validate_name(app_id, "app id")
    if "." in name:
        raise InvalidName(
            f"invalid app id {name!r}: an app id cannot contain dots "
            "(in an invocation target, app.namespace, the dot separates the namespace)"
        )
    return name


def call_topic(app_id: str, namespace: str = "") -> str:
    """The topic on which the sidecars of ``app_id`` in ``namespace`` serve sync invocations."""
    return CALL_TOPIC_PREFIX + qualified_id(app_id, namespace)


def async_topic(app_id: str, namespace: str = "") -> str:
    """The topic on which the sidecars of ``app_id`` in ``namespace`` serve async invocations."""
    return ASYNC_TOPIC_PREFIX + qualified_id(app_id, namespace)


@dataclass(frozen=True, slots=True)
class Call:
    """One invocation of a method of an app, as the caller's sidecar received it."""

    app_id: str
    method: str
    verb: str
    query: str
    headers: Headers
    body: bytes
    caller: str
    invocation_id: str | None = None
    namespace: str = ""  # the callee's; "" or "default" is the default namespace

    @property
    def target(self) -> str:
        """The callee as Dapr writes a target: ``app-id``, or ``app-id.namespace`` outside the
        default namespace."""
        if is_default_namespace(self.namespace):
            return self.app_id
        return f"{self.app_id}.{self.namespace}"

    def to_envelope(self) -> Envelope:
        """The request envelope that carries this call on the bus."""
        attributes = {
            "app": self.app_id,
            "method": self.method,
            "verb": self.verb,
            "query": self.query,
            "caller": self.caller,
        }
        if self.invocation_id is not None:
            attributes["iid"] = self.invocation_id
        if not is_default_namespace(self.namespace):
            attributes["ns"] = self.namespace
        return Envelope(headers=self.headers, body=self.body, attributes=attributes)

    @classmethod
    def from_envelope(cls, envelope: Envelope) -> Call:
        """Read a call from its request envelope; a missing attribute raises InvalidArgument."""
        attributes = envelope.attributes
        try:
            return cls(
                app_id=attributes["app"],
                method=attributes["method"],
                verb=attributes["verb"],
                query=attributes.get("query", ""),
                headers=envelope.headers,
                body=envelope.body,
                caller=attributes.get("caller", ""),
                invocation_id=attributes.get("iid"),
                namespace=attributes.get("ns", ""),
            )
        except KeyError as exc:
            raise InvalidArgument(f"invocation envelope lacks attribute {exc}") from None


@dataclass(frozen=True, slots=True)
class Reply:
    """The app's response to a call: status, headers (multi-valued) and body, verbatim."""

    status: int
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""

    def to_envelope(self) -> Envelope:
        """The reply envelope that carries this response on the bus."""
        return Envelope(status=self.status, headers=self.headers, body=self.body)

    @classmethod
    def from_envelope(cls, envelope: Envelope) -> Reply:
        """Read a reply from its envelope."""
        return cls(status=envelope.status, headers=envelope.headers, body=envelope.body)


class AppCaller(Protocol):
    """Calls the local app; raises :class:`invoke.errors.AppUnreachable` when it cannot."""

    async def __call__(self, call: Call, timeout: float) -> Reply:
        """The app's reply to ``call`` within ``timeout`` seconds."""
        ...
