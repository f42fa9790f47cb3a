"""The Dapr query language (:mod:`state.query`) translated to SQLite's JSON functions.

Every key path and every value is a bound parameter; only the table name (a checked identifier)
is formatted into the SQL.  The ordering matches :func:`state.query.sort_documents`: absent and
null first, then booleans, numbers, strings and the rest, ties by key.
"""

from __future__ import annotations

from typing import Any

import orjson

from state.query import And, Eq, Filter, In, Or, Query

_RANK = (
    "CASE json_type(value, ?) WHEN 'true' THEN 1 WHEN 'false' THEN 1 WHEN 'integer' THEN 2 "
    "WHEN 'real' THEN 2 WHEN 'text' THEN 3 WHEN 'object' THEN 4 WHEN 'array' THEN 4 ELSE 0 END"
)


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def json_path(path: tuple[str, ...]) -> str:
    """``("person", "org")`` -> ``$."person"."org"`` (segments hold no quotes; query checks)."""
    return "$" + "".join(f'."{part}"' for part in path)


def _eq(path: tuple[str, ...], value: Any) -> tuple[str, list[Any]]:
    where = json_path(path)
    if value is None:
        return "json_type(value, ?) = 'null'", [where]
    if isinstance(value, bool):
        return "json_type(value, ?) = ?", [where, "true" if value else "false"]
    if isinstance(value, int | float):
        if isinstance(value, int) and not _INT64_MIN <= value <= _INT64_MAX:
            value = float(value)  # SQLite's JSON reads such a number as a real, and so do we
        return (
            "(json_type(value, ?) IN ('integer', 'real') AND json_extract(value, ?) = ?)",
            [where, where, value],
        )
    if isinstance(value, str):
        sql = "(json_type(value, ?) = 'text' AND json_extract(value, ?) = ?)"
        return sql, [where, where, value]
    return "json_extract(value, ?) = json(?)", [where, orjson.dumps(value).decode()]


def filter_sql(flt: Filter) -> tuple[str, list[Any]]:
    """A WHERE fragment and its parameters."""
    if isinstance(flt, Eq):
        return _eq(flt.path, flt.value)
    if isinstance(flt, In):
        parts = [_eq(flt.path, value) for value in flt.values]
    else:
        assert isinstance(flt, And | Or)
        parts = [filter_sql(operand) for operand in flt.operands]
    joiner = " AND " if isinstance(flt, And) else " OR "
    return "(" + joiner.join(sql for sql, _ in parts) + ")", [p for _, ps in parts for p in ps]


def select_sql(table: str, query: Query, key_prefix: str, now: str) -> tuple[str, list[Any]]:
    """The SELECT of one page (one row more than the limit, to tell whether a next page exists)."""
    sql = (
        f"SELECT key, value, etag, expiration_time FROM {table} "
        "WHERE substr(key, 1, ?) = ? AND is_binary = 0 AND json_valid(value) "
        "AND (expiration_time IS NULL OR expiration_time > ?)"
    )
    params: list[Any] = [len(key_prefix), key_prefix, now]
    if query.filter is not None:
        where, extra = filter_sql(query.filter)
        sql += " AND " + where
        params += extra
    order = []
    for spec in query.sort:
        direction = "DESC" if spec.descending else "ASC"
        order.append(f"{_RANK} {direction}, json_extract(value, ?) {direction}")
        params += [json_path(spec.path), json_path(spec.path)]
    sql += " ORDER BY " + ", ".join([*order, "key ASC"])
    if query.limit:
        sql += " LIMIT ? OFFSET ?"
        params += [query.limit + 1, query.offset]
    elif query.offset:
        sql += " LIMIT -1 OFFSET ?"
        params.append(query.offset)
    return sql, params
