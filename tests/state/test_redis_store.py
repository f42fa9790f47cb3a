"""state.redis against Dapr's layout: hashes Dapr wrote read through, ours carry Dapr's fields."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from state.errors import BulkError, ETagInvalid, ETagMismatch, StoreUnavailable
from state.redis import RedisStore, RedisStoreSettings
from state.store import Concurrency, DeleteRequest, Feature, Journal, SetRequest, StateStore
from tests.backends.redis import RedisServer, free_port

pytestmark = pytest.mark.redis

Key = Callable[[str], str]


@pytest.fixture
async def store(store_redis: StateStore) -> AsyncIterator[RedisStore]:
    assert isinstance(store_redis, RedisStore)
    yield store_redis


async def test_a_hash_written_the_way_dapr_writes_it_reads_through(
    store: RedisStore, key: Key
) -> None:
    # Given a hash as Dapr's state.redis writes it (HSET data + HINCRBY version)
    await store.client.hset(key("dapr"), mapping={"data": '{"color":"blue"}', "version": "7"})
    # Then it reads with its version as the etag, and a save with that etag bumps it
    item = await store.get(key("dapr"))
    assert item is not None and item.value == b'{"color":"blue"}' and item.etag == "7"
    assert await store.set(SetRequest(key("dapr"), b'{"color":"red"}', etag="7")) == "8"
    with pytest.raises(ETagMismatch):
        await store.set(SetRequest(key("dapr"), b"{}", etag="7"))


async def test_a_saved_value_has_exactly_dapr_fields(store: RedisStore, key: Key) -> None:
    await store.set(SetRequest(key("ours"), b'"hello"'))
    await store.set(SetRequest(key("ours"), b'"again"'))
    assert await store.client.hgetall(key("ours")) == {b"data": b'"again"', b"version": b"2"}
    await store.set(SetRequest(key("fw"), b"1", concurrency=Concurrency.FIRST_WRITE))
    fields = await store.client.hgetall(key("fw"))
    assert fields == {b"data": b"1", b"version": b"1", b"first-write": b"0"}


async def test_recorded_changes_are_entries_of_the_store_s_outbox_stream(
    store: RedisStore, key: Key
) -> None:
    # Given a save with a journal, a transaction with one, and a save without
    await store.set(SetRequest(key("a"), b'"one"', journal=Journal("orders", "a")))
    await store.transact([DeleteRequest(key("a"), journal=Journal("orders", "a"))])
    await store.set(SetRequest(key("b"), b"1"))
    # Then the stream named in the layout holds one entry per journaled change, with its fields
    outbox, lease = f"omnibus:outbox:{store.name}", f"omnibus:outbox-relay:{store.name}"
    entries: Any = await store.client.xrange(outbox)
    [(_, upserted), (_, deleted)] = entries
    assert (upserted[b"op"], upserted[b"value"], upserted[b"etag"]) == (b"upsert", b'"one"', b"1")
    assert set(upserted) == {b"id", b"op", b"key", b"app", b"etag", b"value", b"time"}
    assert (deleted[b"op"], deleted[b"key"], deleted[b"app"]) == (b"delete", b"a", b"orders")
    # And the relay lease is a key with an expiry, taken by a claim, gone once released
    await store.claim_changes("relay-1", lease=30, limit=10)
    assert await store.client.get(lease) == b"relay-1"
    assert 25_000 < await store.client.pttl(lease) <= 30_000
    await store.release_changes("relay-1")
    assert await store.client.exists(lease) == 0


async def test_ttl_is_the_key_expiry_and_minus_one_persists(store: RedisStore, key: Key) -> None:
    await store.set(SetRequest(key("t"), b"1", ttl=100))
    assert 90 < await store.client.ttl(key("t")) <= 100
    await store.set(SetRequest(key("t"), b"2", ttl=-1))
    assert await store.client.ttl(key("t")) == -1
    await store.transact([SetRequest(key("t"), b"3", ttl=50)])
    assert 40 < await store.client.ttl(key("t")) <= 50


async def test_a_plain_string_key_reads_without_etag_and_is_replaced(
    store: RedisStore, key: Key
) -> None:
    await store.client.set(key("old"), b'"legacy"')
    item = await store.get(key("old"))
    assert item is not None and item.value == b'"legacy"' and item.etag is None
    assert await store.set(SetRequest(key("old"), b'"new"')) == "1"
    assert await store.client.hget(key("old"), "data") == b'"new"'


async def test_non_integer_etags_are_invalid(store: RedisStore, key: Key) -> None:
    await store.set(SetRequest(key("e"), b"1"))
    with pytest.raises(ETagInvalid):
        await store.set(SetRequest(key("e"), b"2", etag="abc"))
    with pytest.raises(ETagInvalid):
        await store.transact([DeleteRequest(key("e"), etag="abc")])


async def test_transaction_versions_continue_from_the_stored_ones(
    store: RedisStore, key: Key
) -> None:
    etag = await store.set(SetRequest(key("v"), b"1"))
    await store.transact(
        [SetRequest(key("v"), b"2", etag=etag), SetRequest(key("v"), b"3", etag=str(int(etag) + 1))]
    )
    item = await store.get(key("v"))
    assert item is not None and item.value == b"3" and item.etag == str(int(etag) + 2)


async def test_features_include_actor_only_when_configured(store: RedisStore) -> None:
    base = {Feature.ETAG, Feature.TRANSACTIONAL, Feature.TTL, Feature.QUERY_API}
    assert store.features == base
    actors = RedisStore("a", RedisStoreSettings(actor_state_store=True))
    assert actors.features == base | {Feature.ACTOR}


async def test_the_component_ttl_applies_when_a_save_names_none(
    redis_server: RedisServer, key: Key
) -> None:
    settings = RedisStoreSettings(host="127.0.0.1", port=redis_server.port, ttl=100)
    async with RedisStore("s", settings) as store:
        try:
            await store.set(SetRequest(key("d"), b"1"))
            assert 90 < await store.client.ttl(key("d")) <= 100
            await store.set(SetRequest(key("d"), b"1", ttl=-1))
            assert await store.client.ttl(key("d")) == -1
        finally:
            await store.client.delete(key("d"))


async def test_saves_and_deletes_survive_a_server_that_forgot_its_scripts(
    store: RedisStore, key: Key
) -> None:
    # Given scripts the server knows, then forgets (a restart or SCRIPT FLUSH)
    assert await store.set(SetRequest(key("s"), b"1")) == "1"
    await store.client.script_flush()
    # Then a save, a bulk save with one bad etag and a delete still run, with their own outcomes
    assert await store.set(SetRequest(key("s"), b"2", etag="1")) == "2"
    await store.client.script_flush()
    with pytest.raises(BulkError) as caught:
        await store.bulk_set(
            [SetRequest(key("s"), b"3", etag="2"), SetRequest(key("t"), b"x", etag="9")]
        )
    assert [k for k, _ in caught.value.errors] == [key("t")]
    assert isinstance(caught.value.errors[0][1], ETagMismatch)
    await store.client.script_flush()
    await store.delete(DeleteRequest(key("s"), etag="3"))
    assert await store.get(key("s")) is None


async def test_an_unreachable_server_is_store_unavailable(key: Key) -> None:
    settings = RedisStoreSettings(host="127.0.0.1", port=free_port(), dial_timeout=0.5)
    store = RedisStore("s", settings)
    with pytest.raises(StoreUnavailable):
        await store.connect()
