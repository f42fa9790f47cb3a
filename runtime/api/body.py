"""The one decoder of Dapr request bodies, with the rules of Go's ``encoding/json``.

Dapr decodes every request body with Go's JSON decoder, so clients written against Dapr rely on
two of its rules that Python's decoders do not share:

- struct fields match JSON keys case-insensitively: an exact key wins, else the first key equal
  under case-folding (the JS SDK sends bulk entries as ``entryID``, Dapr's struct says ``entryId``;
  which keys match is :func:`components.fields.go_keys`, shared with ``GET /dapr/subscribe``);
- invalid JSON is a 400, never a crash.

Nesting is bounded (:data:`MAX_DEPTH`): orjson refuses documents deeper than 1024 on load but
cannot serialize deeper than 254, and the stdlib recurses; a body omnibus could read but not write
back (into a CloudEvent, a bulk reply) would fail later as a 500.  The bound is checked without
recursion, and only walked when the body has enough brackets to exceed it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from bus.errors import InvalidArgument
from components.fields import go_keys

__all__ = ["MAX_DEPTH", "MalformedBody", "NestedTooDeep", "field", "fields", "parse_json"]

# Below orjson's serialization limit (254) with room for the envelopes omnibus wraps a body in.
MAX_DEPTH = 200


class MalformedBody(InvalidArgument):
    """A request body is not JSON omnibus accepts: invalid, or nested deeper than MAX_DEPTH."""


class NestedTooDeep(MalformedBody):
    """A request body is JSON nested deeper than MAX_DEPTH."""


def parse_json(raw: bytes, *, what: str = "request body") -> Any:
    """Decode ``raw`` as JSON; :class:`MalformedBody` if it is invalid or nested too deep."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if str(exc).startswith("depth limit exceeded"):  # orjson's own bound, at 1024
            raise NestedTooDeep(f"{what} is nested deeper than {MAX_DEPTH} levels") from None
        raise MalformedBody(f"{what} is not valid JSON: {exc}") from None
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and _depth_exceeds(value, MAX_DEPTH):
        raise NestedTooDeep(f"{what} is nested deeper than {MAX_DEPTH} levels")
    return value


def _depth_exceeds(value: Any, bound: int) -> bool:
    """Whether ``value`` has containers nested more than ``bound`` deep (iterative walk)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Iterable[Any] = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > bound:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def field(obj: Mapping[str, Any], name: str, default: Any = None) -> Any:
    """``obj[name]`` as Go matches struct fields: exact key, else the first case-folded one."""
    if name in obj:
        return obj[name]
    spelled = go_keys(obj, name)
    return obj[spelled[0]] if spelled else default


_ABSENT = object()


def go_view(obj: Mapping[str, Any], names: frozenset[str]) -> Mapping[str, Any]:
    """``obj`` as Go decodes it into a struct with the fields ``names``: name -> value, for
    lookups with ``.get``.  ``obj`` itself when every key is spelled exactly as a field (the
    common case, and the cheap one); else each field matched as :func:`field` matches it."""
    if names.issuperset(obj):
        return obj
    return fields(obj, names)


def fields(obj: Mapping[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """Canonical name -> value of each of ``names`` present in ``obj`` (matched as ``field``)."""
    found: dict[str, Any] = {}
    for name in names:
        value = field(obj, name, _ABSENT)
        if value is not _ABSENT:
            found[name] = value
    return found
