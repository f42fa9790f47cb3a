"""The outbox of ``state.postgresql`` (the change feed's records): its tables and statements.

Tables ``<state table>_outbox`` (records) and ``<state table>_outbox_lease`` (the relay lease of
each store name), created by :func:`state._postgres_schema.migrate` (see :mod:`state.postgresql`).

A write with a journal is one statement: the state write in a data-modifying ``WITH`` and the
record inserted from what it returned, so the record exists exactly when the write happened
(a failed etag check returns no row and inserts none) and both commit together.  The record's
``seq`` is drawn after the write took its row lock, so two writes of one key are numbered in
the order they commit.
"""

from __future__ import annotations

from typing import Any, Literal

from state.store import Journal, RecordedChange


def create_statements(table: str) -> list[str]:
    """``CREATE ... IF NOT EXISTS`` of the outbox tables of ``table`` (maybe schema-qualified)."""
    name = table.rpartition(".")[2]
    return [
        f"""CREATE TABLE IF NOT EXISTS {table}_outbox (
          seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
          store text NOT NULL,
          event_id text NOT NULL,
          operation text NOT NULL,
          key text NOT NULL,
          app_id text NOT NULL,
          etag text,
          value bytea,
          recorded_at timestamp with time zone NOT NULL DEFAULT now()
        )""",
        f'CREATE INDEX IF NOT EXISTS "{name}_outbox_store_seq" ON {table}_outbox (store, seq)',
        f"""CREATE TABLE IF NOT EXISTS {table}_outbox_lease (
          store text NOT NULL PRIMARY KEY,
          relay text NOT NULL,
          expires_at timestamp with time zone NOT NULL
        )""",
    ]


def recorded(
    statement: str,
    params: list[Any],
    *,
    table: str,
    store: str,
    journal: Journal,
    operation: Literal["upsert", "delete"],
    always: bool = False,
) -> tuple[str, list[Any]]:
    """``statement`` (an INSERT, UPDATE or DELETE of the state table) with its record.

    The record is inserted when the statement touched a row, or in any case with ``always``
    (a delete without etag of a key that may be absent).  The status stays ``INSERT 0 <n>``.
    """
    n = len(params)
    returning = "etag::text, value" if operation == "upsert" else "NULL::text, NULL::bytea"
    source = "w"
    if always:  # still after the write: the sub-select reads what the DELETE returned
        source = "(SELECT NULL::text, NULL::bytea WHERE (SELECT count(*) FROM w) >= 0) AS r"
    sql = (
        f"WITH w (etag, value) AS ({statement} RETURNING {returning}) "
        f"INSERT INTO {table}_outbox (store, event_id, operation, key, app_id, etag, value) "
        f"SELECT ${n + 1}::text, ${n + 2}::text, '{operation}', ${n + 3}::text, ${n + 4}::text, "
        f"* FROM {source}"
    )
    return sql, [*params, store, journal.event_id, journal.key, journal.app_id]


def expired_statement(table: str, delete: str) -> str:
    """``delete`` (of expired rows) inserting an ``expire`` record of store $1 for each row.

    The app and key are the stored key's parts around ``||`` (as :func:`state.feed.expiry_journal`).
    """
    return (
        f"WITH d (key, etag) AS ({delete} RETURNING key, etag::text) "
        f"INSERT INTO {table}_outbox (store, event_id, operation, key, app_id, etag) "
        "SELECT $1::text, gen_random_uuid()::text, 'expire', "
        "CASE WHEN strpos(key, '||') > 0 THEN substr(key, strpos(key, '||') + 2) ELSE key END, "
        "CASE WHEN strpos(key, '||') > 0 THEN substr(key, 1, strpos(key, '||') - 1) ELSE '' END, "
        "etag FROM d"
    )


def claim_statement(table: str) -> str:
    """Take or renew the lease of store $1 for relay $2, $3 seconds; ``INSERT 0 1`` if held."""
    return (
        f"INSERT INTO {table}_outbox_lease AS l (store, relay, expires_at) "
        "VALUES ($1, $2, now() + make_interval(secs => $3)) "
        "ON CONFLICT (store) DO UPDATE SET relay = EXCLUDED.relay, "
        "expires_at = EXCLUDED.expires_at WHERE l.relay = EXCLUDED.relay OR l.expires_at < now()"
    )


def select_statement(table: str) -> str:
    """The oldest $2 records of store $1."""
    return (
        "SELECT seq, event_id, operation, key, app_id, etag, value, recorded_at "
        f"FROM {table}_outbox WHERE store = $1 ORDER BY seq LIMIT $2"
    )


def forget_statement(table: str) -> str:
    """Delete the records numbered $1."""
    return f"DELETE FROM {table}_outbox WHERE seq = ANY($1::bigint[])"


def release_statement(table: str) -> str:
    """Delete the lease of store $1 if relay $2 holds it."""
    return f"DELETE FROM {table}_outbox_lease WHERE store = $1 AND relay = $2"


def change(row: Any) -> RecordedChange:
    """A record from a row of :func:`select_statement`."""
    value = row["value"]
    return RecordedChange(
        str(row["seq"]),
        row["event_id"],
        row["operation"],
        row["key"],
        row["app_id"],
        row["etag"],
        None if value is None else bytes(value),
        row["recorded_at"],
    )
