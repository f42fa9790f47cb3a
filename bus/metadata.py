"""Typed reads of a Dapr component's metadata: the one reader every component kind uses.

Names match case-insensitively, as Dapr's metadata decoder matches them (``redishost`` is
``redisHost``), and a blank value reads as absent.  Booleans take Dapr's vocabulary
(:func:`bus.options.parse_bool`); durations are Go-style strings (``30s``, ``1m30s``) or a bare
number of milliseconds (:func:`bus.options.parse_duration`).  A bad value raises
:class:`~bus.errors.ConfigError` naming the key, the value and what was expected, prefixed with
the component when the reader knows it.  Each component kind keeps its own defaults and rules
on top (the pubsub settings in :mod:`components.pubsub_settings`, the stores' in
:mod:`state.settings`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bus.errors import ConfigError, InvalidArgument
from bus.options import parse_bool, parse_duration

__all__ = ["MetadataReader", "given"]


class MetadataReader:
    """One component's metadata; each read returns None when the key is absent or blank."""

    def __init__(self, metadata: Mapping[str, str], *, component: str | None = None) -> None:
        self.component = component
        self._values = {name.lower(): (name, str(value)) for name, value in metadata.items()}

    def fail(self, name: str, expected: str) -> ConfigError:
        """A ConfigError naming the key, what was expected and the value given."""
        found = self._values.get(name.lower())
        got = "" if found is None else f", got {found[1]!r}"
        return ConfigError(f"{self._label(name)}: expected {expected}{got}")

    def raw(self, *names: str) -> tuple[str, str] | None:
        """``(name, stripped value)`` of the first of ``names`` (a key and its aliases) set."""
        for name in names:
            found = self._values.get(name.lower())
            if found is not None and found[1].strip():
                return name, found[1].strip()
        return None

    def text(self, *names: str) -> str | None:
        """The stripped value of the first of ``names`` that is set."""
        found = self.raw(*names)
        return None if found is None else found[1]

    def integer(self, name: str, *, minimum: int | None = None) -> int | None:
        """An integer, of at least ``minimum`` when given."""
        text = self.text(name)
        if text is None:
            return None
        try:
            number = int(text)
        except ValueError:
            raise self.fail(name, _integer(minimum)) from None
        if minimum is not None and number < minimum:
            raise self.fail(name, _integer(minimum))
        return number

    def boolean(self, name: str) -> bool | None:
        """A boolean in Dapr's vocabulary (``true``, ``1``, ``yes``, ``on`` and their opposites)."""
        text = self.text(name)
        if text is None:
            return None
        return parse_bool(text, what=self._label(name))

    def duration(self, name: str, *, allow_zero: bool = False) -> float | None:
        """Seconds: a positive duration (or, with ``allow_zero``, a non-negative one)."""
        text = self.text(name)
        if text is None:
            return None
        try:
            seconds = parse_duration(text, what=name)
        except InvalidArgument:
            seconds = -1.0
        if seconds < 0 or (seconds == 0 and not allow_zero):
            least = "a non-negative" if allow_zero else "a positive"
            raise self.fail(name, f"{least} duration like '30s', '1m' or milliseconds")
        return seconds

    def _label(self, name: str) -> str:
        """How errors name the key: with the component, when the reader knows it."""
        return name if self.component is None else f"component {self.component!r}: metadata {name}"


def given(**values: Any) -> dict[str, Any]:
    """The keyword arguments that were set (not None), so a settings dataclass's defaults apply
    to the rest."""
    return {name: value for name, value in values.items() if value is not None}


def _integer(minimum: int | None) -> str:
    return {None: "an integer", 0: "a non-negative integer", 1: "a positive integer"}.get(
        minimum, f"an integer >= {minimum}"
    )
