"""Routing rules of a subscription: CEL expressions over ``event``, first match wins.

Each rule is compiled once, when the subscription starts; a rule that does not compile fails
start-up with the subscription's source and the expression.  At delivery the rules are evaluated
in order against ``{"event": <the CloudEvent>}``; the first that yields ``true`` gives the path,
else the default route, else None (Dapr then acks and drops the event).  An expression that fails
to evaluate or yields something other than a boolean raises :class:`RoutingError`, as in Dapr.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bus.errors import ConfigError, OmnibusError
from components.specs import Routes


class RoutingError(OmnibusError):
    """A routing rule could not be evaluated against an event."""


@dataclass(frozen=True, slots=True)
class _Rule:
    source: str
    program: Any  # cel.Program: the extension module has no type information
    path: str


class Router:
    """Picks the app path of an event from a subscription's routes."""

    def __init__(self, routes: Routes, *, where: str = "subscription") -> None:
        compiled = []
        for rule in routes.rules:
            if not rule.match.strip():  # Dapr stores the default route as a rule with no match
                compiled.append(_Rule("", None, rule.path))
                continue
            # Imported here: the package loads its command line (prompt_toolkit, typer, rich),
            # about 15 MB that a sidecar without routing rules should not carry.
            import cel

            try:
                program = cel.compile(rule.match)
            except (ValueError, RuntimeError, TypeError) as exc:
                raise ConfigError(
                    f"{where}: routing rule {rule.match!r} (path {rule.path!r}) "
                    f"is not a valid CEL expression: {exc}"
                ) from exc
            compiled.append(_Rule(rule.match, program, rule.path))
        self._rules = tuple(compiled)
        self.default = routes.default

    @property
    def has_rules(self) -> bool:
        """True when the event must be looked at to pick the path."""
        return bool(self._rules)

    @property
    def paths(self) -> tuple[str, ...]:
        """Every path an event may be sent to."""
        paths = tuple(rule.path for rule in self._rules)
        return paths + ((self.default,) if self.default else ())

    def route(self, event: Mapping[str, Any]) -> str | None:
        """The path for ``event``, or None when no rule matches and there is no default."""
        context = {"event": event}
        for rule in self._rules:
            if rule.program is None:
                return rule.path
            try:
                result = rule.program.execute(context)
            except (ValueError, RuntimeError, TypeError, KeyError) as exc:
                raise RoutingError(f"routing rule {rule.source!r} failed: {exc}") from exc
            if not isinstance(result, bool):
                raise RoutingError(f"routing rule {rule.source!r} yielded {result!r}, not a bool")
            if result:
                return rule.path
        return self.default
