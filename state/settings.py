"""The one place that turns a state component's Dapr metadata into a store and its settings.

Metadata names are matched case-insensitively, as Dapr's decoder does, by the reader every
component kind uses (:class:`bus.metadata.MetadataReader`); ``state.redis`` reads its address
keys with the Redis pubsub's own function (:func:`bus.redis.settings.address_metadata`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path

from bus.errors import ConfigError, InvalidArgument
from bus.metadata import MetadataReader
from bus.options import parse_duration
from state.feed import FeedSettings
from state.memory import MemorySettings, MemoryStore
from state.sqlite import SqliteSettings, SqliteStore
from state.store import StateStore

STORE_TYPES = ("state.in-memory", "state.sqlite", "state.redis", "state.postgresql")
_IDENTIFIER = re.compile(r"[A-Za-z0-9_]+")
_QUALIFIED = re.compile(r"(?:[A-Za-z0-9_]+\.)?[A-Za-z0-9_]+")


class _Metadata:
    """A store component's metadata (read by :class:`bus.metadata.MetadataReader`: any case, a
    blank value is absent), each read with the store's default for an absent key."""

    def __init__(self, component: str, metadata: Mapping[str, str]) -> None:
        self.component = component
        self.read = MetadataReader(metadata, component=component)
        # A store with a change feed records its expiries (and its feed metadata is checked here)
        self.feed = FeedSettings.from_metadata(component, metadata) is not None

    def fail(self, name: str, expected: str) -> ConfigError:
        """A ConfigError naming the component, the metadata key and what was expected."""
        return self.read.fail(name, expected)

    def first(self, *names: str) -> str:
        """The first of ``names`` (a key and its aliases) that is set, else the first name."""
        found = self.read.raw(*names)
        return names[0] if found is None else found[0]

    def string(self, *names: str, default: str) -> str:
        found = self.read.text(*names)
        return default if found is None else found

    def identifier(self, name: str, *, default: str, qualified: bool = False) -> str:
        value = self.string(name, default=default)
        if value == default == "":
            return value
        if not (_QUALIFIED if qualified else _IDENTIFIER).fullmatch(value):
            schema = "[schema.]" if qualified else ""
            raise self.fail(name, f"a {schema}table name of letters, digits and underscores")
        return value

    def boolean(self, name: str, *, default: bool) -> bool:
        found = self.read.boolean(name)
        return default if found is None else found

    def integer(self, name: str, *, default: int, minimum: int | None = None) -> int:
        found = self.read.integer(name, minimum=minimum)
        return default if found is None else found

    def duration(self, name: str, *, default: float, seconds_alias: str | None = None) -> float:
        """Seconds; ``seconds_alias`` (e.g. ``cleanupIntervalInSeconds``) takes bare seconds."""
        if seconds_alias is not None and self.read.raw(name) is None:
            found = self.read.raw(seconds_alias)
            if found is not None and re.fullmatch(r"-?\d+", found[1]):
                return float(found[1])
            name = seconds_alias if found is not None else name
        text = self.read.text(name)
        if text is None:
            return default
        if text.startswith("-"):
            return -1.0  # Dapr: a negative interval disables the feature
        try:
            return parse_duration(text, what=name)
        except InvalidArgument:
            raise self.fail(name, "a duration like '30s', '1h' or milliseconds") from None


def _memory(name: str, md: _Metadata, home: Path) -> StateStore:
    return MemoryStore(name, MemorySettings(record_expiry=md.feed))


def _sqlite(name: str, md: _Metadata, home: Path) -> StateStore:
    settings = SqliteSettings(
        connection_string=md.string("connectionString", "url", default=str(home / "state.db")),
        table=md.identifier("tableName", default="state"),
        metadata_table=md.identifier("metadataTableName", default="metadata"),
        busy_timeout=md.duration("busyTimeout", default=2.0),
        cleanup_interval=md.duration(
            "cleanupInterval", default=3600.0, seconds_alias="cleanupIntervalInSeconds"
        ),
        disable_wal=md.boolean("disableWAL", default=False),
        record_expiry=md.feed,
    )
    for forbidden in ("busy_timeout", "journal_mode"):
        if f"_pragma={forbidden}" in settings.connection_string.lower():
            raise md.fail("connectionString", f"no _pragma={forbidden} (use the metadata)")
    return SqliteStore(name, settings)


def _positive(value: float, default: float) -> float:
    return value if value > 0 else default


def _redis(name: str, md: _Metadata, home: Path) -> StateStore:
    # Imported here: a sidecar without a Redis store keeps no Redis client in memory.
    from bus.redis.settings import address_metadata
    from state.redis import RedisStore, RedisStoreSettings

    ttl = md.integer("ttlInSeconds", default=0, minimum=-1)
    pool = md.integer("poolSize", default=0, minimum=0)
    settings = RedisStoreSettings(
        **address_metadata(md.read, host_required=True),
        actor_state_store=md.boolean("actorStateStore", default=False),
        ttl=ttl or None,
        read_timeout=_positive(md.duration("readTimeout", default=3.0), 3.0),
        pool_size=pool or None,
        max_retries=max(0, md.integer(md.first("redisMaxRetries", "maxRetries"), default=3)),
        min_retry_backoff=_positive(
            md.duration(md.first("redisMinRetryInterval", "minRetryBackoff"), default=0.008), 0.008
        ),
        max_retry_backoff=_positive(
            md.duration(md.first("redisMaxRetryInterval", "maxRetryBackoff"), default=0.512), 0.512
        ),
    )
    # Dapr's other keys (minIdleConns, idleTimeout, ...) are accepted and ignored: redis-py
    # manages its pool itself.
    return RedisStore(name, settings)


def _postgresql(name: str, md: _Metadata, home: Path) -> StateStore:
    # Imported here: a sidecar without a PostgreSQL store keeps no asyncpg in memory.
    from state.postgresql import PostgresSettings, PostgresStore

    connection_string = md.read.text("connectionString")
    if connection_string is None:
        raise md.fail("connectionString", "a PostgreSQL connection string (it is required)")
    table = md.identifier("tableName", default="", qualified=True)
    timeout = md.duration("timeout", default=20.0, seconds_alias="timeoutInSeconds")
    settings = PostgresSettings(
        connection_string=connection_string,
        table_prefix=md.identifier("tablePrefix", default="", qualified=True),
        table=table or None,
        metadata_table=md.identifier("metadataTableName", default="dapr_metadata", qualified=True),
        timeout=_positive(timeout, 20.0),
        cleanup_interval=md.duration(
            "cleanupInterval", default=3600.0, seconds_alias="cleanupIntervalInSeconds"
        ),
        max_connections=md.integer("maxConns", default=10, minimum=1),
        record_expiry=md.feed,
    )
    return PostgresStore(name, settings)


_BUILDERS: dict[str, Callable[[str, _Metadata, Path], StateStore]] = {
    "state.in-memory": _memory,
    "state.sqlite": _sqlite,
    "state.redis": _redis,
    "state.postgresql": _postgresql,
}


def store_from_component(
    name: str, type: str, metadata: Mapping[str, str], *, home: Path
) -> StateStore:
    """A (not yet connected) store for a component of ``type`` with ``metadata``."""
    builder = _BUILDERS.get(type)
    if builder is None:
        raise ConfigError(
            f"component {name!r}: state store type {type!r} is not supported "
            f"(expected one of {', '.join(STORE_TYPES)})"
        )
    return builder(name, _Metadata(name, metadata), home)
