"""The sidecar's settings: daprd-like command-line flags, parsed once.

``python -m runtime.sidecar --app-id ID [--dapr-http-port 3500] [--app-port P]
[--resources-path DIR]... [--app-max-concurrency -1] [--max-body-size 4Mi]
[--dapr-listen-addresses 127.0.0.1] [--app-channel-address 127.0.0.1]
[--app-health-check-path PATH] [--drain-timeout 5s | --dapr-graceful-shutdown-seconds 5]
[--enable-app-health-check [--app-health-probe-interval 5] [--app-health-probe-timeout 500]
[--app-health-threshold 3]] [--log-level info]``.

``--app-health-check-path`` alone makes start-up wait until the path answers 2xx.  With
``--enable-app-health-check`` the sidecar keeps probing it (default ``/healthz``) as Dapr does:
every ``--app-health-probe-interval`` seconds, each probe bounded by
``--app-health-probe-timeout`` milliseconds (both also accept durations like ``5s``, ``500ms``);
after ``--app-health-threshold`` failures in a row the app is unhealthy and no messages are
pulled for it (they stay in the broker) until a probe succeeds again.

``--app-max-concurrency`` is -1 (unbounded) by default, as in daprd; a positive value bounds the
calls in the app at once (the app channel's connection pool).  ``--drain-timeout`` bounds how long
requests and handlers in flight may finish at shutdown.  The API tokens and ``OMNIBUS_HOME`` come
from :mod:`runtime.environment`.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bus.errors import ConfigError, InvalidArgument
from bus.options import parse_duration
from invoke import validate_own_app_id

DEFAULT_MAX_BODY_SIZE = 4 * 1024 * 1024
DEFAULT_HTTP_PORT = 3500

_SIZE = re.compile(r"(\d+)\s*(Ki|Mi|Gi|KiB|MiB|GiB|k|K|M|G|KB|MB|GB|B)?")
_UNITS = {
    None: 1,
    "B": 1,
    "Ki": 1024,
    "KiB": 1024,
    "Mi": 1024**2,
    "MiB": 1024**2,
    "Gi": 1024**3,
    "GiB": 1024**3,
    "k": 1000,
    "K": 1000,
    "KB": 1000,
    "M": 1000**2,
    "MB": 1000**2,
    "G": 1000**3,
    "GB": 1000**3,
}
LOG_LEVELS = ("debug", "info", "warning", "warn", "error", "critical")


def parse_size(value: str) -> int:
    """Bytes from a Kubernetes-style quantity (``4Mi``, ``512Ki``, ``1G``) or a bare byte count."""
    match = _SIZE.fullmatch(value.strip())
    if match is None:
        raise ConfigError(f"size {value!r}: expected bytes or a quantity like '4Mi', '512Ki', '1G'")
    size = int(match.group(1)) * _UNITS[match.group(2)]
    if size < 1:
        raise ConfigError(f"size {value!r} must be at least one byte")
    return size


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """Dapr's app health check: GET ``path`` every ``interval``; ``threshold`` failures in a row
    (an answer outside 2xx, or none within ``timeout``) make the app unhealthy."""

    path: str = "/healthz"
    interval: float = 5.0
    timeout: float = 0.5
    threshold: int = 3

    def __post_init__(self) -> None:
        if not self.path.startswith("/"):
            raise ConfigError("--app-health-check-path: expected a path starting with '/'")
        if self.interval <= 0 or self.timeout <= 0:
            raise ConfigError("app health probe interval and timeout must be positive")
        if self.threshold < 1:
            raise ConfigError("--app-health-threshold: expected a positive number")


@dataclass(frozen=True, slots=True)
class SidecarConfig:
    """Everything one sidecar process needs to know, parsed at the edge."""

    app_id: str
    http_port: int = DEFAULT_HTTP_PORT
    app_port: int | None = None
    host: str = "127.0.0.1"
    app_channel_address: str = "127.0.0.1"
    resources_paths: tuple[Path, ...] = ()  # empty: the default components under OMNIBUS_HOME
    app_max_concurrency: int = -1  # -1: unbounded, as daprd; else the bound on calls into the app
    max_body_size: int = DEFAULT_MAX_BODY_SIZE
    app_health_check_path: str | None = None
    app_health: HealthCheck | None = None  # --enable-app-health-check
    drain_timeout: float = 5.0
    log_level: str = "info"
    bus: str | None = None  # the pubsub that carries state and invocation (runtime.system_bus)
    invocation_results_ttl: float = 24 * 3600.0  # how long async invocation results are kept
    invocation_store: str | None = None  # the state component keeping them (default: embedded)

    def __post_init__(self) -> None:
        try:
            validate_own_app_id(self.app_id)
        except ValueError as exc:
            raise ConfigError(f"--app-id: {exc}") from exc
        for flag, port in (("--dapr-http-port", self.http_port), ("--app-port", self.app_port)):
            if port is not None and not 0 <= port <= 65535:
                raise ConfigError(f"{flag}: {port} is not a TCP port (0-65535)")
        if self.app_max_concurrency == 0 or self.app_max_concurrency < -1:
            raise ConfigError("--app-max-concurrency: expected a positive number, or -1")
        if self.app_health_check_path is not None and not self.app_health_check_path.startswith(
            "/"
        ):
            raise ConfigError("--app-health-check-path: expected a path starting with '/'")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m runtime.sidecar", description="The omnibus sidecar (Dapr HTTP API)."
    )
    parser.add_argument("--app-id", required=True)
    parser.add_argument("--app-port", type=int, default=None)
    parser.add_argument("--dapr-http-port", type=int, default=DEFAULT_HTTP_PORT)
    parser.add_argument("--dapr-listen-addresses", default="127.0.0.1")
    parser.add_argument("--resources-path", action="append", default=[], type=Path)
    parser.add_argument("--app-max-concurrency", type=int, default=-1)
    parser.add_argument("--max-body-size", default="4Mi")
    parser.add_argument("--app-channel-address", default="127.0.0.1")
    parser.add_argument("--app-health-check-path", default=None)
    parser.add_argument("--enable-app-health-check", action="store_true")
    parser.add_argument("--app-health-probe-interval", default="5")
    parser.add_argument("--app-health-probe-timeout", default="500")
    parser.add_argument("--app-health-threshold", type=int, default=3)
    parser.add_argument("--drain-timeout", default="5s")
    # daprd's name for the same bound, in seconds; wins over --drain-timeout when given
    parser.add_argument("--dapr-graceful-shutdown-seconds", type=float, default=None)
    parser.add_argument("--log-level", default="info", choices=LOG_LEVELS)
    parser.add_argument("--bus", default=None, help="pubsub component for state and invocation")
    parser.add_argument("--invocation-results-ttl", default="24h", help="keep async results for")
    parser.add_argument("--invocation-store", default=None, help="state component for them")
    return parser


def parse_args(argv: Sequence[str]) -> SidecarConfig:
    """Build the configuration from daprd-like flags; ConfigError on bad values."""
    args = _parser().parse_args(list(argv))
    try:
        drain = parse_duration(args.drain_timeout, what="--drain-timeout")
        results_ttl = parse_duration(args.invocation_results_ttl, what="--invocation-results-ttl")
    except InvalidArgument as exc:
        raise ConfigError(str(exc)) from exc
    if results_ttl <= 0:
        raise ConfigError("--invocation-results-ttl must be positive, e.g. '24h'")
    if args.dapr_graceful_shutdown_seconds is not None:
        if args.dapr_graceful_shutdown_seconds < 0:
            raise ConfigError("--dapr-graceful-shutdown-seconds must not be negative")
        drain = args.dapr_graceful_shutdown_seconds
    health = _health_check(args) if args.enable_app_health_check else None
    return SidecarConfig(
        app_id=args.app_id,
        app_port=args.app_port,
        http_port=args.dapr_http_port,
        host=args.dapr_listen_addresses.split(",")[0].strip(),
        app_channel_address=args.app_channel_address,
        resources_paths=tuple(args.resources_path),
        app_max_concurrency=args.app_max_concurrency,
        max_body_size=parse_size(args.max_body_size),
        app_health_check_path=args.app_health_check_path,
        app_health=health,
        drain_timeout=drain,
        log_level="warning" if args.log_level == "warn" else args.log_level,
        bus=args.bus or None,
        invocation_results_ttl=results_ttl,
        invocation_store=args.invocation_store or None,
    )


def _health_check(args: argparse.Namespace) -> HealthCheck:
    """The health check of the flags: Dapr's units (interval in s, timeout in ms) or durations."""
    return HealthCheck(
        path=args.app_health_check_path or "/healthz",
        interval=_seconds(args.app_health_probe_interval, 1.0, "--app-health-probe-interval"),
        timeout=_seconds(args.app_health_probe_timeout, 0.001, "--app-health-probe-timeout"),
        threshold=args.app_health_threshold,
    )


def _seconds(value: str, unit: float, flag: str) -> float:
    try:
        return float(value) * unit
    except ValueError:
        pass
    try:
        return parse_duration(value, what=flag)
    except InvalidArgument as exc:
        raise ConfigError(str(exc)) from exc
