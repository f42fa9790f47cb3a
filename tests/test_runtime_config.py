"""The sidecar's flags: daprd's names, defaults, and clear errors for bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from bus.errors import ConfigError
from runtime.config import DEFAULT_MAX_BODY_SIZE, HealthCheck, parse_args, parse_size


def test_defaults_follow_daprd() -> None:
    config = parse_args(["--app-id", "orders"])
    assert config.http_port == 3500
    assert config.app_port is None
    assert config.host == "127.0.0.1"
    assert config.app_max_concurrency == -1
    assert config.max_body_size == DEFAULT_MAX_BODY_SIZE == 4 * 1024 * 1024
    assert config.drain_timeout == 5.0
    assert config.resources_paths == ()


def test_every_flag() -> None:
    config = parse_args(
        [
            "--app-id", "orders", "--dapr-http-port", "3600", "--app-port", "6000",
            "--resources-path", "a", "--resources-path", "b", "--app-max-concurrency", "8",
            "--max-body-size", "512Ki", "--dapr-listen-addresses", "0.0.0.0",
            "--app-health-check-path", "/healthz", "--drain-timeout", "1500ms",
            "--log-level", "warn",
        ]
    )  # fmt: skip
    assert (config.http_port, config.app_port) == (3600, 6000)
    assert config.resources_paths == (Path("a"), Path("b"))
    assert config.app_max_concurrency == 8
    assert config.max_body_size == 512 * 1024
    assert config.host == "0.0.0.0"
    assert config.app_health_check_path == "/healthz"
    assert config.drain_timeout == 1.5
    assert config.log_level == "warning"
    graceful = parse_args(["--app-id", "a", "--dapr-graceful-shutdown-seconds", "2"])
    assert graceful.drain_timeout == 2.0


@pytest.mark.parametrize(
    ("value", "size"), [("4Mi", 4 << 20), ("100", 100), ("1K", 1000), ("2MB", 2_000_000)]
)
def test_sizes(value: str, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (["--app-id", "bad id"], "--app-id"),
        (["--app-id", "a", "--app-port", "70000"], "--app-port"),
        (["--app-id", "a", "--app-max-concurrency", "0"], "--app-max-concurrency"),
        (["--app-id", "a", "--max-body-size", "lots"], "size"),
        (["--app-id", "a", "--drain-timeout", "soon"], "--drain-timeout"),
        (["--app-id", "a", "--app-health-check-path", "healthz"], "--app-health-check-path"),
    ],
)
def test_bad_values_are_config_errors(argv: list[str], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        parse_args(argv)


def test_app_health_check_flags_as_daprd() -> None:
    assert parse_args(["--app-id", "a"]).app_health is None
    assert parse_args(["--app-id", "a", "--enable-app-health-check"]).app_health == HealthCheck(
        path="/healthz", interval=5.0, timeout=0.5, threshold=3
    )
    config = parse_args(
        [
            "--app-id", "a", "--enable-app-health-check", "--app-health-check-path", "/up",
            "--app-health-probe-interval", "2", "--app-health-probe-timeout", "250",
            "--app-health-threshold", "5",
        ]
    )  # fmt: skip
    assert config.app_health == HealthCheck(path="/up", interval=2.0, timeout=0.25, threshold=5)
    durations = ["--app-health-probe-interval", "1s", "--app-health-probe-timeout", "2s"]
    config = parse_args(["--app-id", "a", "--enable-app-health-check", *durations])
    assert config.app_health is not None
    assert (config.app_health.interval, config.app_health.timeout) == (1.0, 2.0)


@pytest.mark.parametrize(
    "flags",
    [
        ["--app-health-threshold", "0"],
        ["--app-health-probe-interval", "soon"],
        ["--app-health-probe-timeout", "0"],
        ["--app-health-check-path", "healthz"],
    ],
)
def test_bad_app_health_flags(flags: list[str]) -> None:
    with pytest.raises(ConfigError):
        parse_args(["--app-id", "a", "--enable-app-health-check", *flags])
