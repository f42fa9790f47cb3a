"""The Dapr query language (:mod:`state.query`) translated to PostgreSQL's jsonb operators.

Values are ``bytea``; the function ``<state table>_jsonb(bytea)`` (created with the tables,
returning NULL for values that are not JSON text) turns them into jsonb.  Key paths and values
are bound parameters.  The ordering matches :func:`state.query.sort_documents`: absent and null
first, then booleans, numbers, strings (by code point, ``COLLATE "C"``) and the rest, ties by key.
"""

from __future__ import annotations

from typing import Any

import orjson

from state.query import And, Eq, Filter, In, Or, Query

JSONB_FUNCTION = """
CREATE OR REPLACE FUNCTION {name}(value bytea) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
  RETURN convert_from(value, 'UTF8')::jsonb;
EXCEPTION WHEN others THEN
  RETURN NULL;
END $$
"""


def jsonb_function(table: str) -> str:
    """The name of the table's bytea-to-jsonb function, in the table's schema."""
    return f"{table}_jsonb"


_RANK = (
    "CASE jsonb_typeof(doc #> {p}) WHEN 'boolean' THEN 1 WHEN 'number' THEN 2 "
    "WHEN 'string' THEN 3 WHEN 'object' THEN 4 WHEN 'array' THEN 4 ELSE 0 END"
)


class _Params:
    """Positional parameters ``$1, $2, ...`` collected while the SQL is written."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def add(self, value: Any, cast: str = "") -> str:
        self.values.append(value)
        return f"${len(self.values)}{cast}"


def _filter(flt: Filter, params: _Params) -> str:
    if isinstance(flt, Eq):
        path = params.add(list(flt.path), "::text[]")
        return f"doc #> {path} = {params.add(orjson.dumps(flt.value).decode(), '::jsonb')}"
    if isinstance(flt, In):
        path = params.add(list(flt.path), "::text[]")
        values = [orjson.dumps(v).decode() for v in flt.values]
        return f"doc #> {path} = ANY({params.add(values, '::jsonb[]')})"
    assert isinstance(flt, And | Or)
    joiner = " AND " if isinstance(flt, And) else " OR "
    return "(" + joiner.join(_filter(operand, params) for operand in flt.operands) + ")"


def select_sql(table: str, query: Query, key_prefix: str) -> tuple[str, list[Any]]:
    """The SELECT of one page (one row more than the limit, to tell whether a next page exists)."""
    params = _Params()
    prefix = params.add(key_prefix)
    sql = (
        "SELECT key, value, etag, expires_at FROM ("
        f"SELECT key, value, etag, expires_at, {jsonb_function(table)}(value) AS doc FROM {table} "
        f"WHERE left(key, length({prefix})) = {prefix} "
        "AND (expires_at IS NULL OR expires_at >= now())) AS rows WHERE doc IS NOT NULL"
    )
    if query.filter is not None:
        sql += " AND " + _filter(query.filter, params)
    order = []
    for spec in query.sort:
        direction = "DESC" if spec.descending else "ASC"
        p = params.add(list(spec.path), "::text[]")
        order += [
            f"{_RANK.format(p=p)} {direction}",
            f"CASE WHEN jsonb_typeof(doc #> {p}) = 'number' THEN (doc #>> {p})::numeric END "
            f"{direction}",
            f'(doc #>> {p}) COLLATE "C" {direction}',
        ]
    sql += " ORDER BY " + ", ".join([*order, 'key COLLATE "C" ASC'])
    if query.limit:
        sql += f" LIMIT {params.add(query.limit + 1)}"
    if query.offset:
        sql += f" OFFSET {params.add(query.offset)}"
    return sql, params.values
