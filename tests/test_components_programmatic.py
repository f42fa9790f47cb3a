"""``GET /dapr/subscribe`` read as Dapr reads it: Go's JSON decoder, field names in any case."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from bus.errors import ConfigError
from components.fields import Field, go_keys
from components.loader import parse_programmatic
from components.specs import BulkSubscribe, RouteRule, Routes

SPELLINGS: dict[str, Callable[[str], str]] = {
    "lower": str.lower,
    "upper": str.upper,
    "capitalized": lambda name: name[0].upper() + name[1:],
}


def spelled(how: Callable[[str], str], value: object) -> object:
    """``value`` with every struct field name spelled by ``how`` (metadata keys left alone)."""
    if isinstance(value, list):
        return [spelled(how, item) for item in value]
    if not isinstance(value, dict):
        return value
    return {how(k): v if k == "metadata" else spelled(how, v) for k, v in value.items()}


FULL = {
    "pubsubname": "pubsub",
    "topic": "inventory",
    "deadLetterTopic": "poison",
    "metadata": {"rawPayload": "true"},
    "routes": {"rules": [{"match": 'event.type == "widget"', "path": "/widgets"}], "default": "/d"},
    "bulkSubscribe": {"enabled": True, "maxMessagesCount": 10, "maxAwaitDurationMs": 5},
}


@pytest.mark.parametrize("how", SPELLINGS.values(), ids=SPELLINGS.keys())
def test_every_field_is_read_in_any_case(how: Callable[[str], str]) -> None:
    (spec,) = parse_programmatic(spelled(how, [FULL]))
    assert (spec.pubsubname, spec.topic, spec.dead_letter_topic) == (
        "pubsub",
        "inventory",
        "poison",
    )
    assert spec.routes == Routes(
        rules=(RouteRule('event.type == "widget"', "/widgets"),), default="/d"
    )
    assert dict(spec.metadata) == {"rawPayload": "true"}
    assert spec.bulk == BulkSubscribe(enabled=True, max_messages=10, max_await_ms=5)


def test_the_route_form_in_the_case_apps_write_it() -> None:
    (spec,) = parse_programmatic([{"PubsubName": "pubsub", "Topic": "orders", "Route": "orders"}])
    assert (spec.pubsubname, spec.topic, spec.routes) == (
        "pubsub",
        "orders",
        Routes(default="/orders"),
    )


def test_of_two_spellings_of_a_field_the_last_wins() -> None:
    first, second = parse_programmatic(
        [
            {"pubsubname": "p", "topic": "a", "Topic": "b", "route": "/x"},
            {"pubsubname": "p", "TOPIC": "c", "topic": "d", "route": "/y", "ROUTE": "/z"},
        ]
    )
    assert (first.topic, first.routes.default) == ("b", "/x")
    assert (second.topic, second.routes.default) == ("d", "/z")


def test_a_later_null_changes_nothing_and_objects_decode_into_each_other() -> None:
    # Go decodes a second spelling of a struct or map into what the first one set
    (spec,) = parse_programmatic(
        [
            {
                "pubsubname": "p",
                "topic": "t",
                "Topic": None,
                "routes": {"rules": [{"path": "/all"}], "default": "/d"},
                "Routes": {"Default": "/e", "default": None},
                "metadata": {"a": "1"},
                "Metadata": {"b": "2"},
            }
        ]
    )
    assert spec.topic == "t"
    assert spec.routes == Routes(rules=(RouteRule("", "/all"),), default="/e")
    assert dict(spec.metadata) == {"a": "1", "b": "2"}


def test_metadata_keys_are_a_map_and_keep_their_case() -> None:
    (spec,) = parse_programmatic(
        [
            {
                "pubsubname": "p",
                "topic": "t",
                "route": "/t",
                "metadata": {"rawPayload": "true", "RAWPAYLOAD": "x"},
            }
        ]
    )
    assert dict(spec.metadata) == {"rawPayload": "true", "RAWPAYLOAD": "x"}


def test_an_error_names_the_field_as_the_app_spelled_it() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_programmatic([{"PubsubName": "p", "Topic": 7, "Route": "/t"}])
    assert str(caught.value) == (
        "GET /dapr/subscribe: [0].Topic: expected a topic name "
        "(up to 200 of A-Z a-z 0-9 _ . : / -), got 7"
    )


def test_resource_files_keep_exact_field_names() -> None:
    # Only JSON that Dapr decodes with Go's decoder is read in any case
    doc = Field("orders.yaml", "spec", {"Topic": "t"})
    assert not doc.child("topic").present
    assert (
        Field("GET /dapr/subscribe", "", {"Topic": "t"}, go_json=True).child("topic").value == "t"
    )


def test_go_keys_lists_every_spelling_in_order() -> None:
    assert go_keys({"Topic": 1, "route": 2, "topic": 3, "TOPIC": 4}, "topic") == [
        "Topic",
        "topic",
        "TOPIC",
    ]
    assert go_keys({"route": 1}, "topic") == []
