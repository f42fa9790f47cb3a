"""The pubsub components the CLI talks to, opened from the same resource files as the sidecar."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

from bus.broker import BaseBroker
from bus.errors import ConfigError
from components.loader import load_resources
from components.registry import build_pubsub, default_home, ensure_default_components

CLI_APP_ID = "omnibus"  # the app id the CLI loads resources as (scopes) and publishes as
# Each process gets its own in-memory bus, so the CLI could see nothing through one.
_PRIVATE_TYPES = frozenset({"pubsub.in-memory"})


def resources_paths(paths: Sequence[Path], environ: Mapping[str, str]) -> list[Path]:
    """The given directories, or ``$OMNIBUS_HOME/components`` with the defaults written once."""
    return list(paths) or [ensure_default_components(default_home(environ))]


@contextlib.asynccontextmanager
async def open_pubsubs(
    paths: Sequence[Path],
    *,
    environ: Mapping[str, str],
    app_id: str = CLI_APP_ID,
    only: str | None = None,
) -> AsyncIterator[dict[str, BaseBroker]]:
    """Connected brokers of the pubsub components (or only the one named ``only``), by name."""
    home = default_home(environ)
    dirs = resources_paths(paths, environ)
    resources = load_resources(dirs, app_id=app_id, environ=environ)
    specs = [c for c in resources.components if c.kind == "pubsub"]
    if only is not None:
        specs = [c for c in specs if c.name == only]
        if not specs:
            known = ", ".join(sorted(c.name for c in resources.components if c.kind == "pubsub"))
            where = ", ".join(str(d) for d in dirs)
            raise ConfigError(
                f"no pubsub component named {only!r} in {where} (found: {known or 'none'})"
            )
    instance = f"omnibus-cli-{os.getpid()}"
    async with contextlib.AsyncExitStack() as stack:
        brokers: dict[str, BaseBroker] = {}
        for spec in specs:
            if spec.type in _PRIVATE_TYPES and only is None:
                continue
            pubsub = build_pubsub(
                spec, app_id=app_id, instance=instance, home=home, resources=resources
            )
            brokers[spec.name] = await stack.enter_async_context(pubsub.broker)
        yield brokers
