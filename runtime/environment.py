"""The one module that reads the process environment.

Everything else receives these values as arguments, so tests can run many sidecars in one
process without touching ``os.environ``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Environment:
    """What omnibus takes from environment variables."""

    home: Path  # OMNIBUS_HOME, default ~/.omnibus: default components and the embedded bus.db
    api_token: str | None  # DAPR_API_TOKEN: callers must send it as `dapr-api-token`
    app_api_token: str | None  # APP_API_TOKEN: the sidecar sends it to the app
    namespace: str = ""  # NAMESPACE: the state key prefix `namespace` uses it, as Dapr

    @property
    def default_resources_path(self) -> Path:
        """Where ``omnibus run`` looks for components without ``--resources-path``."""
        return self.home / "components"


def read_environment(environ: dict[str, str] | None = None) -> Environment:
    """Read omnibus's settings from ``environ`` (default: the process environment)."""
    env = dict(os.environ if environ is None else environ)
    home = Path(env.get("OMNIBUS_HOME") or Path.home() / ".omnibus").expanduser()
    return Environment(
        home=home,
        api_token=env.get("DAPR_API_TOKEN") or None,
        app_api_token=env.get("APP_API_TOKEN") or None,
        namespace=env.get("NAMESPACE", "").strip(),
    )
