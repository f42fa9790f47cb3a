"""The sidecar's idle footprint: modules only some configurations need are imported on demand."""

from __future__ import annotations

import subprocess
import sys

from components.specs import RouteRule, Routes
from runtime.pubsub.routing import Router


def _modules_after(statement: str) -> set[str]:
    code = f"{statement}\nimport sys\nprint(' '.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=60
    )
    return set(out.stdout.split())


def test_sidecar_import_leaves_cel_out() -> None:
    loaded = _modules_after("import runtime.sidecar")
    assert "runtime.api.app" in loaded
    assert "cel" not in loaded
    assert "prompt_toolkit" not in loaded


def test_router_with_rules_still_compiles_cel() -> None:
    router = Router(Routes(rules=(RouteRule('event.type == "a"', "/a"),), default="/d"))
    assert router.has_rules
    assert router.route({"type": "a"}) == "/a"
    assert router.route({"type": "b"}) == "/d"
