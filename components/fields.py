"""Reading untrusted YAML/JSON values with the path of every field, for error messages.

A :class:`Field` is a value plus where it came from: ``orders.yaml``, ``spec.metadata[2].value``.
Its accessors either return the value in the expected Python type or raise
:class:`~bus.errors.ConfigError` saying ``<file>: <field>: expected <what>, got <what was there>``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from bus.errors import ConfigError, InvalidArgument
from bus.options import parse_bool, parse_duration

T = TypeVar("T")

_MISSING = object()


def describe(value: object) -> str:
    """A short, readable rendering of what was found, for 'got ...'."""
    if value is _MISSING:
        return "nothing"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True, slots=True)
class Field:
    """One value of a resource document and its path inside that document."""

    source: str
    path: str
    value: object = _MISSING

    @property
    def present(self) -> bool:
        """True if the field exists and is not null."""
        return self.value is not _MISSING and self.value is not None

    def fail(self, expected: str) -> ConfigError:
        """The error for this field: what was expected and what was found."""
        where = f"{self.path}: " if self.path else ""
        return ConfigError(f"{self.source}: {where}expected {expected}, got {describe(self.value)}")

    def error(self, message: str) -> ConfigError:
        """An error about this field with a free-form message."""
        where = f"{self.path}: " if self.path else ""
        return ConfigError(f"{self.source}: {where}{message}")

    def child(self, key: str) -> Field:
        """The field ``key`` of this mapping (missing if absent); this must be a mapping or null."""
        mapping = self.mapping()
        path = f"{self.path}.{key}" if self.path else key
        return Field(self.source, path, mapping.get(key, _MISSING))

    def mapping(self) -> dict[str, object]:
        """The value as a mapping with string keys; a missing or null field is an empty one."""
        if not self.present:
            return {}
        if not isinstance(self.value, dict) or not all(isinstance(k, str) for k in self.value):
            raise self.fail("a mapping")
        return self.value

    def items(self) -> Iterator[tuple[str, Field]]:
        """The entries of this mapping as (key, field)."""
        for key in self.mapping():
            yield key, self.child(key)

    def list(self) -> list[Field]:
        """The elements of this list; a missing or null field is an empty list."""
        if not self.present:
            return []
        if not isinstance(self.value, list):
            raise self.fail("a list")
        return [Field(self.source, f"{self.path}[{i}]", v) for i, v in enumerate(self.value)]

    def string(self) -> str:
        """A required non-empty string."""
        if not isinstance(self.value, str) or not self.value.strip():
            raise self.fail("a non-empty string")
        return self.value.strip()

    def optional_string(self) -> str | None:
        """A non-empty string, or None when the field is missing, null or empty."""
        if not self.present or self.value == "":
            return None
        return self.string()

    def scalar(self) -> str:
        """A string, number or boolean rendered as Dapr renders metadata values (``true``)."""
        if not self.present:
            return ""
        if isinstance(self.value, bool):
            return "true" if self.value else "false"
        if isinstance(self.value, str | int | float):
            return str(self.value)
        raise self.fail("a string, number or boolean")

    def boolean(self, default: bool) -> bool:
        """A YAML boolean or a string in Dapr's vocabulary (``parse_bool``); ``default`` when
        missing."""
        if not self.present:
            return default
        if isinstance(self.value, bool):
            return self.value
        if isinstance(self.value, str):
            try:
                return parse_bool(self.value, what=self.path)
            except ConfigError:
                pass
        raise self.fail("a boolean (true/false, yes/no, on/off, 1/0, t/f, y/n)")

    def integer(self, default: int, *, minimum: int | None = None) -> int:
        """An integer (also as a string of digits); ``default`` when missing."""
        if not self.present:
            return default
        value = self.value
        if isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                raise self.fail("an integer") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail("an integer")
        if minimum is not None and value < minimum:
            raise self.fail(f"an integer >= {minimum}")
        return value

    def duration(self, default: float) -> float:
        """Seconds from ``5s``/``1m30s``/``500ms`` or a number of milliseconds."""
        if not self.present:
            return default
        try:
            return parse_duration(self.value)
        except InvalidArgument:
            raise self.fail("a duration like '5s', '1m30s', '500ms' or milliseconds") from None

    def string_map(self, transform: Callable[[Field], str] | None = None) -> dict[str, str]:
        """A mapping of names to scalars, as strings (``transform`` may resolve each value)."""
        convert = transform or Field.scalar
        return {key: convert(field) for key, field in self.items()}

    def strings(self) -> tuple[str, ...]:
        """A list of non-empty strings (``scopes``)."""
        return tuple(item.string() for item in self.list())

    def check(self, parse: Callable[[str], T], expected: str) -> T:
        """Run ``parse`` on the string value; any ValueError becomes this field's ConfigError."""
        if not isinstance(self.value, str) or not self.value.strip():
            raise self.fail(expected)
        try:
            return parse(self.value.strip())
        except ValueError:
            raise self.fail(expected) from None
