"""Component metadata -> each backend's settings (components.pubsub_settings): no server needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from bus.errors import ConfigError
from bus.rabbitmq import DEFAULT_URL
from bus.sqlite import default_path
from components.pubsub_settings import rabbit_settings, redis_settings, sqlite_settings

# -- redis ----------------------------------------------------------------------------------


def test_redis_durations_accept_go_strings_and_milliseconds() -> None:
    as_text = redis_settings({"redeliverInterval": "30s", "readTimeout": "1m"})
    as_ms = redis_settings({"redeliverInterval": "30000", "readTimeout": "60000"})
    assert as_text.redeliver_interval == as_ms.redeliver_interval == 30.0
    assert as_text.read_timeout == as_ms.read_timeout == 60.0
    assert redis_settings({"dialTimeout": "500ms"}).dial_timeout == 0.5


def test_redis_metadata_names_follow_dapr() -> None:
    settings = redis_settings(
        {
            "redisHost": "redis.local:6380",
            "redisPassword": "secret",
            "redisUsername": "app",
            "redisDB": "2",
            "enableTLS": "true",
            "maxLenApprox": "1000",
        }
    )
    assert (settings.host, settings.port, settings.db, settings.tls) == (
        "redis.local",
        6380,
        2,
        True,
    )
    assert (settings.username, settings.password) == ("app", "secret")
    assert settings.max_len_approx == 1000
    assert "secret" not in repr(settings)
    defaults = redis_settings({})
    assert (defaults.host, defaults.port, defaults.redeliver_interval) == ("localhost", 6379, 15.0)
    assert defaults.max_len_approx is None and defaults.tls is False
    assert redis_settings({"maxLenApprox": "0"}).max_len_approx is None
    assert redis_settings({"redisHost": "[::1]:7000"}).address == "::1:7000"
    assert redis_settings({"redisHost": "cache"}).port == 6379
    durable = redis_settings({"waitReplicas": "1", "waitAOF": "true", "waitTimeout": "250ms"})
    assert (durable.wait_replicas, durable.wait_aof, durable.wait_timeout) == (1, True, 0.25)
    assert (defaults.wait_replicas, defaults.wait_aof) == (0, False)


def test_metadata_names_match_in_any_case_as_in_dapr(tmp_path: Path) -> None:
    # Given keys spelled in other cases than Dapr's docs spell them (Dapr's decoder accepts them)
    redis = redis_settings({"REDISHOST": "cache:7000", "redisdb": "2", "EnableTls": "true"})
    sqlite = sqlite_settings({"ConnectionString": str(tmp_path / "bus.db"), "busytimeout": "3s"})
    rabbit = rabbit_settings({"PrefetchCount": "7", "DURABLE": "false"})
    # Then each one counts, as its canonical spelling would
    assert (redis.host, redis.port, redis.db, redis.tls) == ("cache", 7000, 2, True)
    assert (sqlite.path, sqlite.busy_timeout) == (tmp_path / "bus.db", 3.0)
    assert (rabbit.prefetch_count, rabbit.durable) == (7, False)


@pytest.mark.parametrize(
    ("metadata", "field"),
    [
        ({"redisHost": "host:port"}, "redisHost"),
        ({"redisHost": "host:70000"}, "redisHost"),
        ({"redisDB": "-1"}, "redisDB"),
        ({"enableTLS": "maybe"}, "enableTLS"),
        ({"redeliverInterval": "soon"}, "redeliverInterval"),
        ({"readTimeout": "0"}, "readTimeout"),
        ({"maxLenApprox": "-5"}, "maxLenApprox"),
        ({"redisType": "cluster"}, "redisType"),
        ({"waitReplicas": "-1"}, "waitReplicas"),
        ({"waitAOF": "sometimes"}, "waitAOF"),
        ({"waitTimeout": "0"}, "waitTimeout"),
    ],
)
def test_redis_bad_metadata_raises_config_error_naming_the_field(
    metadata: dict[str, str], field: str
) -> None:
    with pytest.raises(ConfigError, match=field):
        redis_settings(metadata)


# -- sqlite ---------------------------------------------------------------------------------


def test_sqlite_settings_from_metadata(tmp_path: Path) -> None:
    settings = sqlite_settings(
        {
            "connectionString": str(tmp_path / "x.db"),
            "redeliverInterval": "1500",
            "maxPollInterval": "20ms",
            "busyTimeout": "2s",
            "maxLenApprox": "5000",
            "someOtherLayer": "ignored",
        }
    )
    assert settings.path == tmp_path / "x.db"
    assert settings.redeliver_interval == 1.5
    assert (settings.max_poll_interval, settings.busy_timeout) == (0.02, 2.0)
    assert settings.max_len == 5000 and sqlite_settings({}).max_len is None
    assert sqlite_settings({}, home=tmp_path).path == tmp_path / "bus.db"
    assert sqlite_settings({}).path == default_path()
    assert sqlite_settings({"connectionString": "file:a.db"}).path == Path("a.db")
    assert sqlite_settings({"busyTimeout": "0"}).busy_timeout == 0.0


@pytest.mark.parametrize(
    ("metadata", "named"),
    [
        ({"redeliverInterval": "soon"}, "redeliverInterval"),
        ({"redeliverInterval": "-5"}, "redeliverInterval"),
        ({"minPollInterval": "0s"}, "minPollInterval"),
        ({"minPollInterval": "100ms", "maxPollInterval": "10ms"}, "maxPollInterval"),
        ({"connectionString": ":memory:"}, "connectionString"),
        ({"connectionString": "file:bus.db?mode=ro"}, "connectionString"),
        ({"maxLenApprox": "lots"}, "maxLenApprox"),
        ({"maxLenApprox": "0"}, "maxLenApprox"),
    ],
)
def test_sqlite_bad_settings_raise_config_error(metadata: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        sqlite_settings(metadata)


# -- rabbitmq -------------------------------------------------------------------------------


def test_rabbit_defaults_are_the_safe_ones() -> None:
    settings = rabbit_settings({})
    assert settings.url == DEFAULT_URL
    assert settings.durable is True
    assert settings.delivery_mode == 2
    assert settings.prefetch_count == 200
    assert settings.exchange_kind == "fanout"
    assert settings.queue_arguments("g-t") == {}


def test_rabbit_dapr_metadata_names() -> None:
    settings = rabbit_settings(
        {
            "host": "amqp://u:p@rabbit:5673/vh",
            "durable": "false",
            "deliveryMode": "1",
            "prefetchCount": "0",
            "enableDeadLetter": "true",
            "ttlInSeconds": "60",
            "maxLen": "1000",
            "maxLenBytes": "1048576",
            "reconnectWaitSeconds": "5",
            "exchangeKind": "topic",
        }
    )
    assert settings.url == "amqp://u:p@rabbit:5673/vh"
    assert (settings.durable, settings.delivery_mode, settings.prefetch_count) == (False, 1, 0)
    assert settings.ttl_seconds == 60 and settings.reconnect_wait == 5.0
    assert settings.exchange_kind == "topic"
    assert settings.queue_arguments("g-t") == {
        "x-max-length": 1000,
        "x-max-length-bytes": 1048576,
        "x-dead-letter-exchange": "dlx-g-t",
    }
    # connectionString wins over host; durations accept Go spellings
    both = {"connectionString": "amqps://a/", "host": "amqp://b/", "reconnectWait": "500ms"}
    parsed = rabbit_settings(both)
    assert parsed.url == "amqps://a/" and parsed.reconnect_wait == 0.5


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("connectionString", "http://host/"),
        ("durable", "maybe"),
        ("deliveryMode", "3"),
        ("prefetchCount", "-1"),
        ("prefetchCount", "lots"),
        ("maxLen", "0"),
        ("ttlInSeconds", "1.5"),
        ("exchangeKind", "x-delayed"),
        ("reconnectWait", "soon"),
    ],
)
def test_rabbit_bad_values_name_the_key(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=key if key != "connectionString" else "amqp"):
        rabbit_settings({key: value})


# -- one boolean vocabulary -----------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [("t", True), ("YES", True), (" off ", False)])
def test_every_boolean_key_takes_daprs_vocabulary(text: str, expected: bool) -> None:
    assert redis_settings({"enableTLS": text}).tls is expected
    assert rabbit_settings({"durable": text}).durable is expected
    assert rabbit_settings({"enableDeadLetter": text}).enable_dead_letter is expected
