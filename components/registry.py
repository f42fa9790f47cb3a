"""Pubsub component specs -> brokers (not connected) with their subscription defaults.

Supported types and the backend each builds (imported only when a component uses it):

- ``pubsub.sqlite``: ``bus.sqlite.SqliteBroker``; ``connectionString`` defaults to
  ``<home>/bus.db`` (``home`` = ``OMNIBUS_HOME`` or ``~/.omnibus``).
- ``pubsub.redis``: ``bus.redis.RedisBroker`` (Redis Streams, Dapr's wire format).
- ``pubsub.rabbitmq``: ``bus.rabbitmq.RabbitBroker`` (Dapr's topology).
- ``pubsub.in-memory``: ``bus.memory.MemoryBroker`` on a hub of its own (one process only).

Metadata every type reads, with Dapr's names and defaults (:class:`PubSubDefaults`):
``consumerID`` (the group; default the app id; ``{appID}``, ``{uuid}`` and ``{podName}`` are
expanded), ``concurrency`` 10, ``queueDepth`` 100, ``processingTimeout`` 60s (``30s`` or ms).
The retry policy comes from a Resiliency file's inbound policy for the component (see
:mod:`components.resiliency`), else the bus default; an inbound time-out there overrides
``processingTimeout``.  Each backend's own keys are read by :mod:`components.pubsub_settings`.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from bus.broker import BaseBroker
from bus.errors import ConfigError, InvalidArgument
from bus.message import validate_name
from bus.options import RetryPolicy, parse_duration
from components.pubsub_settings import rabbit_settings, redis_settings, sqlite_settings
from components.resiliency import inbound_retry, inbound_timeout
from components.specs import ComponentMetadata, ComponentSpec, Resources

log = logging.getLogger("omnibus.components")

T = TypeVar("T")

DEFAULT_CONCURRENCY = 10
DEFAULT_QUEUE_DEPTH = 100
DEFAULT_PROCESSING_TIMEOUT = 60.0
DEFAULT_PUBSUB_NAME = "pubsub"


@dataclass(frozen=True, slots=True)
class PubSubDefaults:
    """How subscriptions on this pubsub consume, unless a subscription says otherwise."""

    group: str | None = None  # consumerID; None = the app id
    concurrency: int = DEFAULT_CONCURRENCY
    batch_size: int = DEFAULT_QUEUE_DEPTH
    processing_timeout: float = DEFAULT_PROCESSING_TIMEOUT
    retry: RetryPolicy = field(default_factory=RetryPolicy)


@dataclass(frozen=True, slots=True)
class PubSub:
    """A pubsub component ready to connect: the sidecar connects and closes ``broker``."""

    name: str
    type: str
    broker: BaseBroker
    defaults: PubSubDefaults
    capabilities: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Backend:
    module: str
    settings: Callable[[Mapping[str, str]], object] | None  # None for in-memory
    broker: str
    capabilities: tuple[str, ...]


# Dapr's feature names, as /v1.0/metadata shows them.  Every omnibus broker publishes a batch in
# one round trip (BULK_PUBLISH).  MESSAGE_TTL means broker-native expiry (RabbitMQ's per-message
# expiration, as Dapr's rabbitmq advertises); elsewhere the subscribing sidecar drops expired
# events, which Dapr does not advertise as a feature either.
_BULK = ("BULK_PUBLISH",)
BACKENDS: Mapping[str, _Backend] = {
    "pubsub.sqlite": _Backend("bus.sqlite", sqlite_settings, "SqliteBroker", _BULK),
    "pubsub.redis": _Backend("bus.redis", redis_settings, "RedisBroker", _BULK),
    "pubsub.rabbitmq": _Backend(
        "bus.rabbitmq", rabbit_settings, "RabbitBroker", (*_BULK, "MESSAGE_TTL")
    ),
    "pubsub.in-memory": _Backend("bus.memory", None, "MemoryBroker", _BULK),
}


def supported_types() -> tuple[str, ...]:
    """The pubsub types whose backend module is installed, in a stable order."""
    return tuple(t for t in BACKENDS if importlib.util.find_spec(BACKENDS[t].module) is not None)


def build_pubsub(
    spec: ComponentSpec,
    *,
    app_id: str,
    instance: str,
    home: Path,
    resources: Resources | None = None,
    drain_timeout: float = 5.0,
) -> PubSub:
    """The broker (not connected) and subscription defaults of one pubsub component.

    ``drain_timeout`` bounds how long the broker lets handlers in progress finish when it closes.
    """
    backend = BACKENDS.get(spec.type)
    if backend is None:
        raise _unsupported(spec, "is not a supported pubsub type")
    try:
        module = importlib.import_module(backend.module)
    except ModuleNotFoundError as exc:
        if exc.name != backend.module:
            raise
        raise _unsupported(spec, "is not available in this installation") from exc
    metadata = spec.metadata
    if spec.type == "pubsub.sqlite" and not metadata.get("connectionString", "").strip():
        given = {k: v for k, v in metadata.items() if k.lower() != "connectionstring"}
        metadata = ComponentMetadata({**given, "connectionString": str(home / "bus.db")})
    broker = _guarded(
        spec, lambda: _make_broker(module, backend, metadata, instance, drain_timeout)
    )
    defaults = _guarded(spec, lambda: read_defaults(spec, app_id=app_id, instance=instance))
    resiliencies = resources.resiliencies if resources is not None else ()
    retry = inbound_retry(resiliencies, spec.name)
    timeout = inbound_timeout(resiliencies, spec.name)
    if retry is not None:
        defaults = replace(defaults, retry=retry)
    if timeout:
        defaults = replace(defaults, processing_timeout=timeout)
    return PubSub(
        name=spec.name,
        type=spec.type,
        broker=broker,
        defaults=defaults,
        capabilities=backend.capabilities,
    )


def read_defaults(spec: ComponentSpec, *, app_id: str, instance: str) -> PubSubDefaults:
    """The consumer settings of a component's metadata (Dapr names and defaults)."""
    md = spec.metadata
    group = None
    if md.get("consumerID", "").strip():
        template = md["consumerID"].strip()
        group = (
            template.replace("{appID}", app_id)
            .replace("{uuid}", uuid.uuid4().hex)
            .replace("{podName}", instance)
        )
        validate_name(group, "consumerID")
    processing_timeout = DEFAULT_PROCESSING_TIMEOUT
    if md.get("processingTimeout", "").strip():
        processing_timeout = parse_duration(md["processingTimeout"], what="processingTimeout")
        if processing_timeout <= 0:
            raise InvalidArgument("processingTimeout must be positive (omnibus always redelivers)")
    return PubSubDefaults(
        group=group,
        concurrency=_positive(md, "concurrency", DEFAULT_CONCURRENCY),
        batch_size=_positive(md, "queueDepth", DEFAULT_QUEUE_DEPTH),
        processing_timeout=processing_timeout,
    )


def default_home(environ: Mapping[str, str]) -> Path:
    """``OMNIBUS_HOME`` if set, else ``~/.omnibus``."""
    home = environ.get("OMNIBUS_HOME", "").strip()
    return Path(home).expanduser() if home else Path.home() / ".omnibus"


DEFAULT_PUBSUB_YAML = """\
# The embedded default: one SQLite file shared by every sidecar on this machine.
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: {name}
spec:
  type: pubsub.sqlite
  version: v1
  metadata:
    - name: connectionString
      value: "{path}"
"""


DEFAULT_STATESTORE_NAME = "statestore"
DEFAULT_STATESTORE_YAML = """\
# The embedded default state store: one SQLite file (Dapr's state.sqlite table layout).
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: {name}
spec:
  type: state.sqlite
  version: v1
  metadata:
    - name: connectionString
      value: "{path}"
"""


def ensure_default_components(home: Path) -> Path:
    """``home/components`` with a default ``pubsub.yaml`` and ``statestore.yaml``, each written
    once; never overwritten."""
    directory = home / "components"
    defaults = {
        "pubsub.yaml": DEFAULT_PUBSUB_YAML.format(
            name=DEFAULT_PUBSUB_NAME, path=_yaml_escape((home / "bus.db").absolute())
        ),
        "statestore.yaml": DEFAULT_STATESTORE_YAML.format(
            name=DEFAULT_STATESTORE_NAME, path=_yaml_escape((home / "state.db").absolute())
        ),
    }
    for name, text in defaults.items():
        target = directory / name
        try:
            directory.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                _write_once(target, text)
        except OSError as exc:
            raise ConfigError(f"{target}: cannot write the default component: {exc}") from exc
    return directory


def _write_once(target: Path, text: str) -> None:
    # Complete file or none, and the first of two racing processes wins: write a private
    # temporary file, then hard-link it into place (which fails if the target exists).
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
    temporary.write_text(text, encoding="utf-8")
    try:
        os.link(temporary, target)
        log.info("wrote the default component %s", target)
    except FileExistsError:
        pass
    finally:
        temporary.unlink()


def _make_broker(
    module: Any,
    backend: _Backend,
    metadata: Mapping[str, str],
    instance: str,
    drain_timeout: float,
) -> BaseBroker:
    broker_class = getattr(module, backend.broker)
    if backend.settings is None:
        hub = module.MemoryHub()
        broker: BaseBroker = broker_class(hub, instance=instance, drain_timeout=drain_timeout)
        return broker
    settings = backend.settings(metadata)
    made: BaseBroker = broker_class(settings, instance=instance, drain_timeout=drain_timeout)
    return made


def _guarded(spec: ComponentSpec, build: Callable[[], T]) -> T:
    try:
        return build()
    except (ConfigError, InvalidArgument) as exc:
        raise ConfigError(f"{spec.source}: component {spec.name!r} ({spec.type}): {exc}") from exc


def _positive(metadata: Mapping[str, str], name: str, default: int) -> int:
    text = metadata.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise InvalidArgument(f"{name}: expected a positive integer, got {text!r}") from None
    if value < 1:
        raise InvalidArgument(f"{name}: expected a positive integer, got {text!r}")
    return value


def _unsupported(spec: ComponentSpec, problem: str) -> ConfigError:
    return ConfigError(
        f"{spec.source}: component {spec.name!r}: spec.type: {spec.type!r} {problem} "
        f"(supported: {', '.join(supported_types())})"
    )


def _yaml_escape(path: Path) -> str:
    return str(path).replace("\\", "\\\\").replace('"', '\\"')
