"""store_from_component: Dapr metadata of every store type into its settings, or a ConfigError."""

from __future__ import annotations

from pathlib import Path

import pytest

from bus.errors import ConfigError
from bus.redis.settings import RedisAddress
from components.pubsub_settings import redis_settings
from state.memory import MemoryStore
from state.postgresql import PostgresStore
from state.redis import RedisStore
from state.settings import store_from_component
from state.sqlite import SqliteSettings, SqliteStore
from state.store import Feature

HOME = Path("/home/someone/.omnibus")


def test_in_memory_takes_no_metadata() -> None:
    store = store_from_component("s", "state.in-memory", {}, home=HOME)
    assert isinstance(store, MemoryStore) and store.name == "s"


def test_sqlite_defaults_follow_dapr_and_live_in_home() -> None:
    store = store_from_component("s", "state.sqlite", {}, home=HOME)
    assert isinstance(store, SqliteStore)
    assert store.settings == SqliteSettings(connection_string=str(HOME / "state.db"))


def test_sqlite_metadata_is_parsed_case_insensitively() -> None:
    metadata = {
        "ConnectionString": "file:/tmp/x.db?_txlock=immediate",
        "tableName": "mystate",
        "metadataTableName": "mymeta",
        "busyTimeout": "500ms",
        "cleanupInterval": "10m",
        "disableWAL": "yes",
    }
    store = store_from_component("s", "state.sqlite", metadata, home=HOME)
    assert isinstance(store, SqliteStore)
    assert store.settings == SqliteSettings(
        "file:/tmp/x.db?_txlock=immediate", "mystate", "mymeta", 0.5, 600.0, True
    )


@pytest.mark.parametrize(
    ("value", "seconds"), [("0", 0.0), ("-1", -1.0), ("1h", 3600.0), ("30000", 30.0)]
)
def test_sqlite_cleanup_interval_spellings(value: str, seconds: float) -> None:
    store = store_from_component("s", "state.sqlite", {"cleanupInterval": value}, home=HOME)
    assert isinstance(store, SqliteStore) and store.settings.cleanup_interval == seconds


def test_cleanup_interval_in_seconds_alias_takes_bare_seconds() -> None:
    metadata = {"cleanupIntervalInSeconds": "90"}
    store = store_from_component("s", "state.sqlite", metadata, home=HOME)
    assert isinstance(store, SqliteStore) and store.settings.cleanup_interval == 90.0


def test_redis_metadata() -> None:
    metadata = {
        "redisHost": "cache:6380",
        "redisPassword": "secret",
        "redisUsername": "me",
        "redisDB": "2",
        "enableTLS": "true",
        "actorStateStore": "true",
        "ttlInSeconds": "60",
        "redisMaxRetries": "5",
        "maxRetryBackoff": "1s",
    }
    store = store_from_component("cache", "state.redis", metadata, home=HOME)
    assert isinstance(store, RedisStore)
    s = store.settings
    assert (s.host, s.port, s.password, s.username, s.db, s.tls, s.ttl) == (
        "cache",
        6380,
        "secret",
        "me",
        2,
        True,
        60,
    )
    assert (s.max_retries, s.min_retry_backoff, s.max_retry_backoff) == (5, 0.008, 1.0)
    assert Feature.ACTOR in store.features
    assert "secret" not in repr(s)


def test_redis_host_without_port_uses_6379() -> None:
    store = store_from_component("c", "state.redis", {"redisHost": "cache"}, home=HOME)
    assert isinstance(store, RedisStore) and store.settings.port == 6379


def test_postgresql_metadata() -> None:
    metadata = {
        "connectionString": "host=db user=u password=p dbname=d",
        "tablePrefix": "app_",
        "cleanupInterval": "0",
        "timeoutInSeconds": "30",
    }
    store = store_from_component("pg", "state.postgresql", metadata, home=HOME)
    assert isinstance(store, PostgresStore)
    s = store.settings
    assert (s.state_table, s.metadata_table, s.cleanup_interval, s.timeout) == (
        "app_state",
        "dapr_metadata",
        0.0,
        30.0,
    )


@pytest.mark.parametrize(
    ("type_", "metadata", "named"),
    [
        ("state.mongodb", {}, "state.mongodb"),
        ("state.postgres", {"connectionString": "x"}, "state.postgres"),
        ("state.sqlite", {"tableName": "bad-name; DROP"}, "tableName"),
        ("state.sqlite", {"busyTimeout": "soon"}, "busyTimeout"),
        ("state.sqlite", {"disableWAL": "maybe"}, "disableWAL"),
        ("state.sqlite", {"connectionString": "f.db?_pragma=busy_timeout(5)"}, "_pragma"),
        ("state.redis", {}, "redisHost"),
        ("state.redis", {"redisHost": "h:port"}, "redisHost"),
        ("state.redis", {"redisHost": "h", "redisDB": "x"}, "redisDB"),
        ("state.redis", {"redisHost": "h", "ttlInSeconds": "-5"}, "ttlInSeconds"),
        ("state.redis", {"redisHost": "h", "redisType": "cluster"}, "redisType"),
        ("state.postgresql", {}, "connectionString"),
        ("state.postgresql", {"connectionString": "x", "tablePrefix": "a b"}, "tablePrefix"),
    ],
)
def test_bad_metadata_names_the_key(type_: str, metadata: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        store_from_component("s", type_, metadata, home=HOME)


@pytest.mark.parametrize(
    "metadata",
    [
        {"redisHost": "cache:6380", "redisPassword": "secret", "redisUsername": "me"},
        {"redisHost": "[::1]:7000", "redisDB": "3", "enableTLS": "true"},
        {"redisHost": "::1", "dialTimeout": "250ms"},
        {"redisHost": "cache", "dialTimeout": "0"},  # 0: the default, as in Dapr
        {"REDISHOST": "cache:6390", "RedisDB": "1"},
    ],
)
def test_both_redis_components_read_one_address_the_same_way(metadata: dict[str, str]) -> None:
    # Given the same metadata in a Redis pubsub component and a Redis state store
    store = store_from_component("s", "state.redis", metadata, home=HOME)
    assert isinstance(store, RedisStore)
    # Then both reach the same server the same way
    assert RedisAddress.of(store.settings) == RedisAddress.of(redis_settings(metadata))


@pytest.mark.parametrize(
    ("metadata", "named"),
    [
        ({"redisHost": "cache:70000"}, "redisHost"),
        ({"redisHost": "[::1]:x"}, "redisHost"),
        ({"redisHost": "cache", "redisDB": "-1"}, "redisDB"),
        ({"redisHost": "cache", "enableTLS": "maybe"}, "enableTLS"),
        ({"redisHost": "cache", "dialTimeout": "-1s"}, "dialTimeout"),
        ({"redisHost": "cache", "redisType": "cluster"}, "redisType"),
        ({"redisHost": "cache", "failover": "true"}, "redisType"),
    ],
)
def test_both_redis_components_refuse_one_bad_address_alike(
    metadata: dict[str, str], named: str
) -> None:
    with pytest.raises(ConfigError, match=named):
        store_from_component("s", "state.redis", metadata, home=HOME)
    with pytest.raises(ConfigError, match=named):
        redis_settings(metadata)
