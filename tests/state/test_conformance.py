"""Dapr's state conformance scenarios, written once and run on every store (see conftest)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from state.errors import BulkError, ETagInvalid, ETagMismatch, InvalidQuery, NotSupported
from state.store import (
    Concurrency,
    DeleteRequest,
    Feature,
    Item,
    SetRequest,
    StateStore,
)

Key = Callable[[str], str]

VALUES = {
    "int": (b"42", False),
    "bool": (b"true", False),
    "bytes": (bytes(range(256)), True),
    "string": (b'"hello world"', False),
    "empty-string": (b'""', False),
    "unicode": ('"h\u00e9llo \u2603"'.encode(), False),
    "json": (b'{"message":"hi","count":3,"nested":{"list":[1,2,null]}}', False),
}


async def _wait_absent(store: StateStore, key: str, deadline: float) -> float:
    """Poll until ``key`` is gone; the time it was first seen absent."""
    while await store.get(key) is not None:
        assert time.time() < deadline, f"{key} still present"
        await asyncio.sleep(0.05)
    return time.time()


@pytest.mark.parametrize("kind", list(VALUES))
async def test_set_then_get_returns_the_same_bytes_and_an_etag(
    store: StateStore, key: Key, kind: str
) -> None:
    value, is_binary = VALUES[kind]
    etag = await store.set(SetRequest(key(kind), value, is_binary=is_binary))
    item = await store.get(key(kind))
    assert item == Item(key(kind), value, etag)
    assert etag


async def test_get_of_a_missing_key_is_none(store: StateStore, key: Key) -> None:
    assert await store.get(key("missing")) is None


async def test_every_write_gets_a_new_etag(store: StateStore, key: Key) -> None:
    first = await store.set(SetRequest(key("k"), b"1"))
    second = await store.set(SetRequest(key("k"), b"2"))
    assert first != second
    item = await store.get(key("k"))
    assert item is not None and item.etag == second and item.value == b"2"


async def test_delete_removes_and_a_missing_key_is_no_error(store: StateStore, key: Key) -> None:
    await store.set(SetRequest(key("k"), b'"v"'))
    await store.delete(DeleteRequest(key("k")))
    assert await store.get(key("k")) is None
    await store.delete(DeleteRequest(key("k")))


async def test_bulk_set_and_bulk_get_keep_order_and_report_missing(
    store: StateStore, key: Key
) -> None:
    await store.bulk_set([SetRequest(key(f"b{i}"), f'{{"n":{i}}}'.encode()) for i in range(3)])
    wanted = [key("b2"), key("nope"), key("b0"), key("b1")]
    result = await store.bulk_get(wanted)
    assert [entry.key for entry in result] == wanted
    assert result[1].item is None and result[1].error is None
    values = [entry.item.value if entry.item else None for entry in result]
    assert values == [b'{"n":2}', None, b'{"n":0}', b'{"n":1}']
    for entry in result:
        if entry.item is not None:
            single = await store.get(entry.key)
            assert single is not None and single.etag == entry.item.etag


async def test_bulk_get_of_nothing_is_empty(store: StateStore) -> None:
    assert await store.bulk_get([]) == []


async def test_transaction_applies_delete_upsert_delete_upsert_in_order(
    store: StateStore, key: Key
) -> None:
    # Given a key that exists, and one more that the transaction deletes last
    await store.set(SetRequest(key("t"), b'"before"'))
    await store.set(SetRequest(key("gone"), b'"x"'))
    # When one transaction deletes, upserts, deletes and upserts the key
    await store.transact(
        [
            DeleteRequest(key("t")),
            SetRequest(key("t"), b'"first"'),
            DeleteRequest(key("t")),
            SetRequest(key("t"), b'"second"'),
            SetRequest(key("gone"), b'"y"'),
            DeleteRequest(key("gone")),
        ]
    )
    # Then the last operation on each key wins
    item = await store.get(key("t"))
    assert item is not None and item.value == b'"second"'
    assert await store.get(key("gone")) is None


async def test_a_failed_etag_check_rolls_the_whole_transaction_back(
    store: StateStore, key: Key
) -> None:
    etag = await store.set(SetRequest(key("a"), b'"a0"'))
    await store.set(SetRequest(key("b"), b'"b0"'))
    stale = await store.set(SetRequest(key("c"), b'"c0"'))
    await store.set(SetRequest(key("c"), b'"c1"'))
    with pytest.raises(ETagMismatch):
        await store.transact(
            [
                SetRequest(key("a"), b'"a1"', etag=etag),
                DeleteRequest(key("b")),
                SetRequest(key("c"), b'"c2"', etag=stale),
            ]
        )
    found = await store.bulk_get([key("a"), key("b"), key("c")])
    assert [e.item.value if e.item else None for e in found] == [b'"a0"', b'"b0"', b'"c1"']


async def test_set_with_the_current_etag_succeeds_and_a_stale_one_fails(
    store: StateStore, key: Key
) -> None:
    etag = await store.set(SetRequest(key("e"), b"1"))
    got = await store.get(key("e"))
    assert got is not None and got.etag == etag
    newer = await store.set(SetRequest(key("e"), b"2", etag=etag))
    with pytest.raises(ETagMismatch):
        await store.set(SetRequest(key("e"), b"3", etag=etag))
    item = await store.get(key("e"))
    assert item is not None and item.value == b"2" and item.etag == newer


async def test_set_with_an_etag_on_a_missing_key_fails(store: StateStore, key: Key) -> None:
    other = await store.set(SetRequest(key("other"), b"1"))
    with pytest.raises(ETagMismatch):
        await store.set(SetRequest(key("absent"), b"1", etag=other))
    assert await store.get(key("absent")) is None


async def test_an_etag_the_store_cannot_parse_is_invalid_or_a_mismatch(
    store: StateStore, key: Key
) -> None:
    await store.set(SetRequest(key("e"), b"1"))
    with pytest.raises((ETagInvalid, ETagMismatch)):
        await store.set(SetRequest(key("e"), b"2", etag="not-an-etag"))
    with pytest.raises((ETagInvalid, ETagMismatch)):
        await store.delete(DeleteRequest(key("e"), etag="not-an-etag"))


async def test_delete_with_etag_checks_it(store: StateStore, key: Key) -> None:
    stale = await store.set(SetRequest(key("d"), b"1"))
    current = await store.set(SetRequest(key("d"), b"2"))
    with pytest.raises(ETagMismatch):
        await store.delete(DeleteRequest(key("d"), etag=stale))
    assert await store.get(key("d")) is not None
    await store.delete(DeleteRequest(key("d"), etag=current))
    assert await store.get(key("d")) is None
    with pytest.raises(ETagMismatch):
        await store.delete(DeleteRequest(key("d"), etag=current))


async def test_bulk_set_applies_the_good_requests_and_lists_the_failed(
    store: StateStore, key: Key
) -> None:
    stale = await store.set(SetRequest(key("x"), b"1"))
    await store.set(SetRequest(key("x"), b"2"))
    await store.set(SetRequest(key("y"), b"1"))
    with pytest.raises(BulkError) as caught:
        await store.bulk_set(
            [
                SetRequest(key("ok1"), b'"a"'),
                SetRequest(key("x"), b"3", etag=stale),
                SetRequest(key("y"), b"2", concurrency=Concurrency.FIRST_WRITE),
                SetRequest(key("ok2"), b'"b"'),
            ]
        )
    assert [k for k, _ in caught.value.errors] == [key("x"), key("y")]
    assert all(isinstance(error, ETagMismatch) for _, error in caught.value.errors)
    found = await store.bulk_get([key("ok1"), key("x"), key("y"), key("ok2")])
    assert [e.item.value if e.item else None for e in found] == [b'"a"', b"2", b"1", b'"b"']


async def test_first_write_without_etag_only_creates(store: StateStore, key: Key) -> None:
    first = SetRequest(key("f"), b'"one"', concurrency=Concurrency.FIRST_WRITE)
    await store.set(first)
    with pytest.raises(ETagMismatch):
        await store.set(SetRequest(key("f"), b'"two"', concurrency=Concurrency.FIRST_WRITE))
    item = await store.get(key("f"))
    assert item is not None and item.value == b'"one"'


async def test_first_write_with_etag_needs_the_current_one(store: StateStore, key: Key) -> None:
    etag = await store.set(SetRequest(key("f"), b"1"))
    newer = await store.set(
        SetRequest(key("f"), b"2", etag=etag, concurrency=Concurrency.FIRST_WRITE)
    )
    with pytest.raises(ETagMismatch):
        await store.set(SetRequest(key("f"), b"3", etag=etag, concurrency=Concurrency.FIRST_WRITE))
    item = await store.get(key("f"))
    assert item is not None and item.etag == newer and item.value == b"2"


async def test_last_write_ignores_no_etag_and_an_empty_one(store: StateStore, key: Key) -> None:
    await store.set(SetRequest(key("l"), b"1"))
    await store.set(SetRequest(key("l"), b"2", etag=""))
    await store.delete(DeleteRequest(key("l"), etag=""))
    assert await store.get(key("l")) is None


async def test_a_value_with_a_ttl_expires_and_reports_its_time(store: StateStore, key: Key) -> None:
    assert Feature.TTL in store.features
    before = datetime.now(UTC)
    await store.set(SetRequest(key("ttl"), b'"short"', ttl=1))
    item = await store.get(key("ttl"))
    assert item is not None and item.expires_at is not None
    assert before + timedelta(seconds=0.5) < item.expires_at < before + timedelta(seconds=2.5)
    [bulk] = await store.bulk_get([key("ttl")])
    assert bulk.item is not None and bulk.item.expires_at == item.expires_at
    expires = item.expires_at.timestamp()
    gone = await _wait_absent(store, key("ttl"), deadline=expires + 1.5)
    assert gone >= expires - 1.0
    # An expired key is absent for first-write too.
    await store.set(SetRequest(key("ttl"), b'"new"', concurrency=Concurrency.FIRST_WRITE))


async def test_ttl_minus_one_and_no_ttl_both_clear_an_existing_ttl(
    store: StateStore, key: Key
) -> None:
    await store.set(SetRequest(key("a"), b"1", ttl=100))
    await store.set(SetRequest(key("b"), b"1", ttl=100))
    item = await store.get(key("a"))
    assert item is not None and item.expires_at is not None
    await store.set(SetRequest(key("a"), b"2", ttl=-1))
    await store.set(SetRequest(key("b"), b"2"))
    for name in ("a", "b"):
        item = await store.get(key(name))
        assert item is not None and item.expires_at is None and item.value == b"2"


async def test_ttl_in_a_transaction(store: StateStore, key: Key) -> None:
    await store.transact([SetRequest(key("tx"), b"1", ttl=50)])
    item = await store.get(key("tx"))
    assert item is not None and item.expires_at is not None


def _person(org: str, number: int, city: str, state: str) -> dict[str, object]:
    return {"person": {"org": org, "id": number}, "city": city, "state": state}


def _docs(key: Key) -> dict[str, object]:
    return {
        key("p1"): _person("Dev Ops", 1036, "Seattle", "WA"),
        key("p2"): _person("Hardware", 1028, "Portland", "OR"),
        key("p3"): _person("Finance", 1071, "Sacramento", "CA"),
        key("p4"): _person("Dev Ops", 1042, "Spokane", "WA"),
        key("p5"): _person("Hardware", 1007, "Los Angeles", "CA"),
        key("p6"): _person("Dev Ops", 1015, "San Francisco", "CA"),
    }


async def _load(store: StateStore, key: Key) -> None:
    await store.bulk_set([SetRequest(k, orjson.dumps(v)) for k, v in _docs(key).items()])
    await store.set(SetRequest(key("bin"), b"\xff\x00", is_binary=True))
    await store.set(SetRequest(key("text"), b"plain text"))
    elsewhere = key("p1").replace("app-", "other-", 1)
    await store.set(SetRequest(elsewhere, orjson.dumps(_docs(key)[key("p1")])))


async def _query(store: StateStore, prefix: str, query: Mapping[str, Any]) -> list[str]:
    result = await store.query(query, prefix)
    return [item.key.removeprefix(prefix) for item in result.results]


@pytest.fixture
def queryable(store: StateStore) -> StateStore:
    if Feature.QUERY_API not in store.features:
        pytest.skip(f"{type(store).__name__} has no query API")
    return store


async def test_query_filters_eq_in_and_or(queryable: StateStore, key: Key, prefix: str) -> None:
    await _load(queryable, key)
    eq = {"filter": {"EQ": {"state": "CA"}}}
    assert sorted(await _query(queryable, prefix, eq)) == ["p3", "p5", "p6"]
    number = {"filter": {"EQ": {"person.id": 1028}}}
    assert await _query(queryable, prefix, number) == ["p2"]
    within = {"filter": {"IN": {"person.org": ["Finance", "Hardware"]}}}
    assert sorted(await _query(queryable, prefix, within)) == ["p2", "p3", "p5"]
    both = {"filter": {"AND": [{"EQ": {"person.org": "Dev Ops"}}, {"EQ": {"state": "CA"}}]}}
    assert await _query(queryable, prefix, both) == ["p6"]
    either = {"filter": {"OR": [{"EQ": {"state": "OR"}}, {"EQ": {"city": "Spokane"}}]}}
    assert sorted(await _query(queryable, prefix, either)) == ["p2", "p4"]
    nothing = {"filter": {"EQ": {"person.missing": "x"}}}
    assert await _query(queryable, prefix, nothing) == []


async def test_query_without_filter_returns_the_json_values_under_the_prefix(
    queryable: StateStore, key: Key, prefix: str
) -> None:
    await _load(queryable, key)
    result = await queryable.query({}, prefix)
    assert sorted(item.key for item in result.results) == sorted(_docs(key))
    assert result.token is None
    first = result.results[0]
    assert orjson.loads(first.value) == _docs(key)[first.key]
    stored = await queryable.get(first.key)
    assert stored is not None and stored.etag == first.etag


async def test_query_sorts_and_pages(queryable: StateStore, key: Key, prefix: str) -> None:
    await _load(queryable, key)
    query: dict[str, object] = {
        "sort": [{"key": "state", "order": "DESC"}, {"key": "person.id"}],
        "page": {"limit": 4},
    }
    first = await queryable.query(query, prefix)
    assert [i.key.removeprefix(prefix) for i in first.results] == ["p1", "p4", "p2", "p5"]
    assert first.token is not None
    query["page"] = {"limit": 4, "token": first.token}
    second = await queryable.query(query, prefix)
    assert [i.key.removeprefix(prefix) for i in second.results] == ["p6", "p3"]
    assert second.token is None


@pytest.mark.parametrize(
    "bad",
    [
        {"filter": {"NEQ": {"state": "CA"}}},
        {"filter": {"EQ": {"a": 1, "b": 2}}},
        {"filter": {"AND": [{"EQ": {"a": 1}}]}},
        {"filter": {"IN": {"a": []}}},
        {"sort": [{"key": "a", "order": "UP"}]},
        {"page": {"limit": -1}},
        {"page": {"limit": 2, "token": "xyz"}},
        {"filter": {"EQ": {"a..b": 1}}},
        {"unknown": 1},
    ],
)
async def test_a_malformed_query_is_invalid(
    queryable: StateStore, prefix: str, bad: dict[str, object]
) -> None:
    with pytest.raises(InvalidQuery):
        await queryable.query(bad, prefix)


async def test_query_on_a_store_without_the_query_api_is_not_supported(
    store: StateStore, prefix: str
) -> None:
    if Feature.QUERY_API in store.features:
        pytest.skip(f"{type(store).__name__} has a query API")
    with pytest.raises(NotSupported):
        await store.query({}, prefix)


async def test_query_compares_json_types_strictly_and_sorts_by_code_point(
    queryable: StateStore, key: Key, prefix: str
) -> None:
    docs = {
        "n1": {"v": 1, "s": "alpha"},
        "t": {"v": True, "s": "Zeta"},
        "s1": {"v": "1", "s": "\u00e9t\u00e9"},
        "f": {"v": 1.0, "s": "beta"},
        "nul": {"v": None, "s": "Alpha"},
    }
    await queryable.bulk_set([SetRequest(key(k), orjson.dumps(v)) for k, v in docs.items()])
    assert sorted(await _query(queryable, prefix, {"filter": {"EQ": {"v": 1}}})) == ["f", "n1"]
    assert await _query(queryable, prefix, {"filter": {"EQ": {"v": True}}}) == ["t"]
    assert await _query(queryable, prefix, {"filter": {"EQ": {"v": "1"}}}) == ["s1"]
    assert await _query(queryable, prefix, {"filter": {"IN": {"v": [None, "x"]}}}) == ["nul"]
    by_name = await _query(queryable, prefix, {"sort": [{"key": "s"}]})
    assert by_name == ["nul", "t", "n1", "f", "s1"]
    by_value = await _query(queryable, prefix, {"sort": [{"key": "v", "order": "DESC"}]})
    assert by_value == ["s1", "f", "n1", "t", "nul"]


async def test_query_takes_integers_beyond_64_bits(
    queryable: StateStore, key: Key, prefix: str
) -> None:
    big = 2**63  # one past SQLite's INTEGER
    await queryable.bulk_set(
        [SetRequest(key("big"), b'{"v": 9223372036854775808}'), SetRequest(key("one"), b'{"v": 1}')]
    )
    assert await _query(queryable, prefix, {"filter": {"EQ": {"v": big}}}) == ["big"]
    assert await _query(queryable, prefix, {"filter": {"IN": {"v": [big, 2]}}}) == ["big"]


async def test_empty_bulk_set_and_transaction_do_nothing(store: StateStore) -> None:
    await store.bulk_set([])
    await store.transact([])


@pytest.mark.parametrize("name", ["with space", "uni\u00e7\u00f8de-\u2603", "glob*?[x]", "a||b"])
async def test_keys_with_any_characters_round_trip(store: StateStore, key: Key, name: str) -> None:
    etag = await store.set(SetRequest(key(name), b'"v"'))
    item = await store.get(key(name))
    assert item is not None and item.etag == etag
    await store.delete(DeleteRequest(key(name), etag=etag))
    assert await store.get(key(name)) is None


async def test_a_large_value_round_trips(store: StateStore, key: Key) -> None:
    value = bytes(range(256)) * 4096  # 1 MiB of every byte value
    await store.set(SetRequest(key("big"), value, is_binary=True))
    item = await store.get(key("big"))
    assert item is not None and item.value == value


async def test_concurrent_saves_with_one_etag_let_exactly_one_win(
    store: StateStore, key: Key
) -> None:
    etag = await store.set(SetRequest(key("race"), b"0"))
    saves = [store.set(SetRequest(key("race"), str(i).encode(), etag=etag)) for i in range(8)]
    results = await asyncio.gather(*saves, return_exceptions=True)
    winners = [r for r in results if isinstance(r, str)]
    assert len(winners) == 1
    assert all(isinstance(r, ETagMismatch) for r in results if not isinstance(r, str))
    item = await store.get(key("race"))
    assert item is not None and item.etag == winners[0]


async def test_concurrent_first_writes_let_exactly_one_win(store: StateStore, key: Key) -> None:
    saves = [
        store.set(SetRequest(key("fw"), str(i).encode(), concurrency=Concurrency.FIRST_WRITE))
        for i in range(8)
    ]
    results = await asyncio.gather(*saves, return_exceptions=True)
    assert sum(isinstance(r, str) for r in results) == 1
    assert all(isinstance(r, ETagMismatch) for r in results if not isinstance(r, str))


async def test_concurrent_transactions_with_one_etag_let_exactly_one_win(
    store: StateStore, key: Key
) -> None:
    etag = await store.set(SetRequest(key("tx"), b"0"))
    transactions = [
        store.transact(
            [SetRequest(key("tx"), str(i).encode(), etag=etag), SetRequest(key(f"w{i}"), b"1")]
        )
        for i in range(8)
    ]
    results = await asyncio.gather(*transactions, return_exceptions=True)
    assert sum(r is None for r in results) == 1
    assert all(isinstance(r, ETagMismatch) for r in results if r is not None)
    winner = results.index(None)
    found = await store.bulk_get([key("tx"), *(key(f"w{i}") for i in range(8))])
    assert found[0].item is not None and found[0].item.value == str(winner).encode()
    assert [e.item is not None for e in found[1:]] == [i == winner for i in range(8)]
