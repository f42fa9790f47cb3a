"""state.redis queries without RediSearch: a SCAN of the prefix, pipelined reads, shared evaluator.

The conformance suite (tests/state/test_conformance.py) checks the query semantics on every store;
these tests cover what is particular to scanning Redis: glob characters in the prefix, other apps'
keys, more keys than one SCAN step, and keys under the prefix that are not hashes of the layout.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import orjson
import pytest

from state.redis import RedisStore
from state.store import Journal, SetRequest, StateStore

pytestmark = pytest.mark.redis

Key = Callable[[str], str]


@pytest.fixture
async def store(store_redis: StateStore) -> AsyncIterator[RedisStore]:
    assert isinstance(store_redis, RedisStore)
    yield store_redis


@pytest.fixture
async def written(store: RedisStore) -> AsyncIterator[list[str]]:
    """Keys a test writes outside its ``prefix`` (the store fixture removes only those in it)."""
    keys: list[str] = []
    yield keys
    if keys:
        await store.client.delete(*keys)


async def _keys(store: RedisStore, prefix: str, query: Mapping[str, Any] | None = None) -> set[str]:
    result = await store.query(query or {}, prefix)
    assert result.token is None
    return {item.key for item in result.results}


async def test_glob_characters_in_the_prefix_match_only_themselves(
    store: RedisStore, written: list[str]
) -> None:
    # Given an app id full of glob characters, and keys of other apps that its prefix would
    # match as a glob if the characters were not escaped
    unique = uuid.uuid4().hex[:8]
    prefix = f"g*?[x]\\{unique}||"
    ours = [prefix + "a", prefix + "b*[?]\\"]
    others = [
        f"gABx{unique}||c",  # * = A, ? = B, [x] = x, \u = u
        f"g*?x\\{unique}||d",  # [x] read literally would need the brackets
        f"g*?[x]{unique}||e",  # \ dropped
    ]
    written += ours + others
    await store.bulk_set([SetRequest(k, orjson.dumps({"k": k})) for k in ours + others])
    # Then the query of the prefix returns exactly its own keys, prefixed as stored
    assert await _keys(store, prefix) == set(ours)
    assert await _keys(store, prefix, {"filter": {"EQ": {"k": ours[1]}}}) == {ours[1]}


async def test_a_key_of_another_app_is_not_returned(
    store: RedisStore, key: Key, prefix: str, written: list[str]
) -> None:
    # Given app "<id>" and apps whose ids start with it or end with it
    app = prefix.removesuffix("||")
    mine, longer, outer = key("order"), f"{app}2||order", f"x{app}||order"
    written += [longer, outer]
    for k in (mine, longer, outer):
        await store.set(SetRequest(k, b'{"n": 1}'))
    # Then only the key of the app itself is returned
    assert await _keys(store, prefix) == {mine}


async def test_more_keys_than_one_scan_step_are_all_returned_and_paged(
    store: RedisStore, key: Key, prefix: str
) -> None:
    # Given 2,500 keys (SCAN steps of 1,000) with a number each
    count = 2500
    await store.bulk_set(
        [SetRequest(key(f"k{i:04}"), orjson.dumps({"n": i})) for i in range(count)]
    )
    # When they are read in pages of 1,000, in descending order of their number
    query: dict[str, object] = {"sort": [{"key": "n", "order": "DESC"}], "page": {"limit": 1000}}
    seen: list[int] = []
    tokens: list[str | None] = []
    while True:
        result = await store.query(query, prefix)
        seen += [orjson.loads(item.value)["n"] for item in result.results]
        tokens.append(result.token)
        if result.token is None:
            break
        query["page"] = {"limit": 1000, "token": result.token}
    # Then every key came exactly once, in order, over three pages
    assert seen == list(range(count - 1, -1, -1))
    assert tokens == ["1000", "2000", None]
    # And a filter over all of them finds the few that match
    within = {"filter": {"IN": {"n": [0, 1234, 2499, 9999]}}}
    assert await _keys(store, prefix, within) == {key("k0000"), key("k1234"), key("k2499")}


async def test_keys_under_the_prefix_that_are_not_hashes_of_the_layout_are_ignored(
    store: RedisStore, key: Key, prefix: str
) -> None:
    # Given a saved value, and under the same prefix a stream, a list, a JSON string key, a
    # hash without a version and one without data
    await store.set(SetRequest(key("good"), b'{"a": 1}'))
    await store.client.xadd(key("stream"), {"a": "1"})
    await store.client.rpush(key("list"), '{"a": 1}')
    await store.client.set(key("string"), '{"a": 1}')
    await store.client.hset(key("no-version"), "data", '{"a": 1}')
    await store.client.hset(key("no-data"), "version", "1")
    # Then a query returns the saved value only, with and without a filter
    assert await _keys(store, prefix) == {key("good")}
    assert await _keys(store, prefix, {"filter": {"EQ": {"a": 1}}}) == {key("good")}


async def test_with_the_none_prefix_the_outbox_stream_and_lease_are_not_results(
    store: RedisStore, key: Key
) -> None:
    # Given an outbox stream and a relay lease of the store (both written under no app prefix)
    await store.set(SetRequest(key("j"), b'{"a": 1}', journal=Journal("orders", "j")))
    assert await store.claim_changes("relay-1", lease=30, limit=10)
    # When everything is queried (keyPrefix "none": the prefix is empty)
    result = await store.query({}, "")
    keys = {item.key for item in result.results}
    # Then the saved value is there and the store's own keys are not
    assert key("j") in keys
    assert not {f"omnibus:outbox:{store.name}", f"omnibus:outbox-relay:{store.name}"} & keys


async def test_results_carry_the_etag_and_expiry_of_each_key(store: RedisStore, key: Key) -> None:
    etag = await store.set(SetRequest(key("t"), b'{"a": 1}', ttl=100))
    await store.set(SetRequest(key("t"), b'{"a": 2}', ttl=100))
    [item] = (await store.query({}, key(""))).results
    assert item.value == b'{"a": 2}' and item.etag == str(int(etag) + 1)
    stored = await store.get(key("t"))
    assert stored is not None and stored.expires_at is not None
    assert item.expires_at == stored.expires_at
