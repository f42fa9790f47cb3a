"""Reading untrusted YAML/JSON values with the path of every field, for error messages.

A :class:`Field` is a value plus where it came from: ``orders.yaml``, ``spec.metadata[2].value``.
Its accessors either return the value in the expected Python type or raise
:class:`~bus.errors.ConfigError` saying ``<file>: <field>: expected <what>, got <what was there>``.

JSON that Dapr decodes with Go's ``encoding/json`` (an app's ``GET /dapr/subscribe``, request
bodies) names struct fields in any case: :func:`go_keys` is the one place that says which keys
name a field, and a ``Field`` made with ``go_json=True`` looks its children up as Go does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
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


def go_keys(obj: Mapping[str, object], name: str) -> list[str]:
    """The keys of ``obj`` that Go's JSON decoder decodes into the struct field ``name``, in order.

    Go matches a key to a field case-insensitively (``PubsubName``, ``pubsubname``); every key
    that matches is decoded, in the order of the object, into the same field.
    """
    folded = name.casefold()
    return [key for key in obj if isinstance(key, str) and key.casefold() == folded]


def _go_decoded(values: list[object]) -> object:
    """What Go leaves in one field after decoding ``values`` (non-empty) into it, in order.

    The last value wins, except that a null changes nothing already set and an object decoded
    over an object adds to it (a struct or map is decoded into, not replaced), key by key with
    the same rule.
    """
    result: object = _MISSING
    for value in values:
        if value is None:
            result = None if result is _MISSING else result
        elif isinstance(value, dict) and isinstance(result, dict):
            merged = dict(result)
            for key, item in value.items():
                merged[key] = _go_decoded([merged[key], item]) if key in merged else item
            result = merged
        else:
            result = value
    return result


@dataclass(frozen=True, slots=True)
class Field:
    """One value of a resource document and its path inside that document.

    With ``go_json`` the mappings below are Go structs decoded from JSON: :meth:`child` finds a
    field under any spelling of its name (the path then says it as the document did), and two
    spellings in one object are decoded in turn, as Go does (:func:`_go_decoded`).  The entries
    of a mapping read with :meth:`items` (a Go map, like ``metadata``) keep their exact keys.
    """

    source: str
    path: str
    value: object = _MISSING
    go_json: bool = False

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
        if self.go_json and (spelled := go_keys(mapping, key)):
            return self._at(spelled[-1], _go_decoded([mapping[k] for k in spelled]))
        return self._at(key, mapping.get(key, _MISSING))

    def _at(self, key: str, value: object) -> Field:
        path = f"{self.path}.{key}" if self.path else key
        return Field(self.source, path, value, self.go_json)

    def mapping(self) -> dict[str, object]:
        """The value as a mapping with string keys; a missing or null field is an empty one."""
        if not self.present:
            return {}
        if not isinstance(self.value, dict) or not all(isinstance(k, str) for k in self.value):
            raise self.fail("a mapping")
        return self.value

    def items(self) -> Iterator[tuple[str, Field]]:
        """The entries of this mapping as (key, field)."""
        for key, value in self.mapping().items():
            yield key, self._at(key, value)

    def list(self) -> list[Field]:
        """The elements of this list; a missing or null field is an empty list."""
        if not self.present:
            return []
        if not isinstance(self.value, list):
            raise self.fail("a list")
        return [
            Field(self.source, f"{self.path}[{i}]", v, self.go_json)
            for i, v in enumerate(self.value)
        ]

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
