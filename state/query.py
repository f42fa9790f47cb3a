"""Dapr's state query language, parsed once into a typed query, and an evaluator for in-memory use.

A query is ``{"filter": F, "sort": [{"key": K, "order": "ASC"|"DESC"}],
"page": {"limit": N, "token": T}}`` where ``F`` is ``{"EQ": {K: v}}``, ``{"IN": {K: [v, ...]}}``,
``{"AND": [F, F, ...]}`` or ``{"OR": [F, F, ...]}`` and ``K`` is a dot path into the JSON value
(``person.org``).  The page token is the offset of the next page as decimal text; SQL stores
translate the same typed query (:func:`parse_query`) into their own dialect.
Values that are not JSON never match a query.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from state.errors import InvalidQuery

_SEGMENT = re.compile(r'[^."\\]+')


@dataclass(frozen=True, slots=True)
class Eq:
    """``path == value``."""

    path: tuple[str, ...]
    value: Any


@dataclass(frozen=True, slots=True)
class In:
    """``path`` equals one of ``values``."""

    path: tuple[str, ...]
    values: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class And:
    """Every operand matches."""

    operands: tuple[Filter, ...]


@dataclass(frozen=True, slots=True)
class Or:
    """At least one operand matches."""

    operands: tuple[Filter, ...]


Filter = Eq | In | And | Or


@dataclass(frozen=True, slots=True)
class Sort:
    """One sort key; ``descending`` for ``"order": "DESC"``."""

    path: tuple[str, ...]
    descending: bool = False


@dataclass(frozen=True, slots=True)
class Query:
    """A parsed query: filter (``None`` = everything), sort keys, page limit (0 = all), offset."""

    filter: Filter | None
    sort: tuple[Sort, ...]
    limit: int
    offset: int


def parse_query(query: Mapping[str, Any]) -> Query:
    """The typed form of a Dapr query; InvalidQuery says what is wrong."""
    if not isinstance(query, Mapping):
        raise InvalidQuery("query: expected a JSON object")
    unknown = set(query) - {"filter", "sort", "page"}
    if unknown:
        raise InvalidQuery(f"query: unknown field(s) {', '.join(sorted(unknown))}")
    raw_filter = query.get("filter")
    parsed = None if raw_filter in (None, {}) else _parse_filter(raw_filter)
    limit, offset = _parse_page(query.get("page"))
    return Query(parsed, _parse_sort(query.get("sort")), limit, offset)


def parse_path(key: object) -> tuple[str, ...]:
    """``"person.org"`` -> ``("person", "org")``; segments may not be empty or hold quotes."""
    if not isinstance(key, str) or not key:
        raise InvalidQuery(f"query: key {key!r} is not a non-empty string")
    parts = tuple(key.split("."))
    if not all(_SEGMENT.fullmatch(part) for part in parts):
        raise InvalidQuery(f"query: key {key!r} is not a dot path like 'person.org'")
    return parts


def _parse_filter(raw: object) -> Filter:
    if not isinstance(raw, Mapping) or len(raw) != 1:
        raise InvalidQuery("query: a filter is an object with exactly one of EQ, IN, AND, OR")
    ((op, arg),) = raw.items()
    if op in ("EQ", "IN"):
        if not isinstance(arg, Mapping) or len(arg) != 1:
            raise InvalidQuery(f"query: {op} takes an object with exactly one key")
        ((key, value),) = arg.items()
        if op == "EQ":
            return Eq(parse_path(key), value)
        if not isinstance(value, list) or not value:
            raise InvalidQuery("query: IN takes a non-empty array of values")
        return In(parse_path(key), tuple(value))
    if op in ("AND", "OR"):
        if not isinstance(arg, list) or len(arg) < 2:
            raise InvalidQuery(f"query: {op} takes an array of at least two filters")
        operands = tuple(_parse_filter(item) for item in arg)
        return And(operands) if op == "AND" else Or(operands)
    raise InvalidQuery(f"query: unknown filter operation {op!r} (expected EQ, IN, AND, OR)")


def _parse_sort(raw: object) -> tuple[Sort, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise InvalidQuery("query: sort is an array of {key, order}")
    result = []
    for entry in raw:
        if not isinstance(entry, Mapping) or "key" not in entry:
            raise InvalidQuery("query: each sort entry is an object with a key")
        order = entry.get("order", "ASC")
        if order not in ("ASC", "DESC"):
            raise InvalidQuery(f"query: sort order {order!r} is not ASC or DESC")
        result.append(Sort(parse_path(entry["key"]), order == "DESC"))
    return tuple(result)


def _parse_page(raw: object) -> tuple[int, int]:
    if raw is None:
        return 0, 0
    if not isinstance(raw, Mapping):
        raise InvalidQuery("query: page is an object {limit, token}")
    limit = raw.get("limit", 0)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise InvalidQuery("query: page.limit must be a non-negative integer")
    token = raw.get("token")
    if token in (None, ""):
        return limit, 0
    if not isinstance(token, str) or not token.isdigit():
        raise InvalidQuery(f"query: page.token {token!r} is not a token this store issued")
    return limit, int(token)


def lookup(document: Any, path: Sequence[str]) -> tuple[bool, Any]:
    """``(found, value)`` of ``path`` inside a decoded JSON document."""
    node = document
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _same(left: Any, right: Any) -> bool:
    # JSON has no bool/number confusion: true is not 1.
    if isinstance(left, bool) or isinstance(right, bool):
        return isinstance(left, bool) and isinstance(right, bool) and left == right
    return bool(left == right)


def matches(flt: Filter | None, document: Any) -> bool:
    """Whether a decoded JSON document satisfies the filter."""
    if flt is None:
        return True
    if isinstance(flt, Eq):
        found, value = lookup(document, flt.path)
        return found and _same(value, flt.value)
    if isinstance(flt, In):
        found, value = lookup(document, flt.path)
        return found and any(_same(value, candidate) for candidate in flt.values)
    if isinstance(flt, And):
        return all(matches(operand, document) for operand in flt.operands)
    return any(matches(operand, document) for operand in flt.operands)


def _rank(found: bool, value: Any) -> tuple[int, Any]:
    # A total order over JSON values: absent/null, booleans, numbers, strings, then the rest.
    if not found or value is None:
        return (0, 0)
    if isinstance(value, bool):
        return (1, value)
    if isinstance(value, int | float):
        return (2, value)
    if isinstance(value, str):
        return (3, value)
    return (4, repr(value))


def sort_documents(rows: list[tuple[str, Any]], sort: Sequence[Sort]) -> list[tuple[str, Any]]:
    """Rows ``(key, document)`` in the query's order; ties (and no sort) keep key order."""
    ordered = sorted(rows, key=lambda row: row[0])
    for spec in reversed(sort):
        ordered.sort(key=lambda row: _rank(*lookup(row[1], spec.path)), reverse=spec.descending)
    return ordered


def page_token(query: Query, returned: int, more: bool) -> str | None:
    """The token of the next page, or ``None`` when this page is the last."""
    if query.limit and more:
        return str(query.offset + returned)
    return None


def run_query(query: Query, values: Iterable[tuple[str, bytes]]) -> tuple[list[str], str | None]:
    """One page of ``query`` over ``(key, value)`` pairs: its keys in order, and the token of the
    next page (None on the last).  Values that are not JSON are left out."""
    rows: list[tuple[str, Any]] = []
    for key, value in values:
        try:
            document = orjson.loads(value)
        except orjson.JSONDecodeError:
            continue
        if matches(query.filter, document):
            rows.append((key, document))
    ordered = sort_documents(rows, query.sort)
    end = query.offset + query.limit if query.limit else len(ordered)
    page = [key for key, _ in ordered[query.offset : end]]
    return page, page_token(query, len(page), end < len(ordered))
