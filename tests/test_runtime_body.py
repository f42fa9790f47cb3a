"""The one decoder of Dapr request bodies: Go's field matching, bounded nesting, clear errors."""

from __future__ import annotations

import pytest

from bus.errors import InvalidArgument
from runtime.api.body import MAX_DEPTH, MalformedBody, field, fields, parse_json


def test_parse_json_decodes_ordinary_bodies() -> None:
    assert parse_json(b'{"a": [1, 2, {"b": null}]}') == {"a": [1, 2, {"b": None}]}
    assert parse_json(b"3") == 3


@pytest.mark.parametrize("raw", [b"", b"{", b"[1,]", b"\xff", b"{'a': 1}", b"NaN"])
def test_invalid_json_is_malformed_body_naming_what(raw: bytes) -> None:
    with pytest.raises(MalformedBody, match="bulk body is not valid JSON"):
        parse_json(raw, what="bulk body")


def test_malformed_body_is_an_invalid_argument() -> None:
    assert issubclass(MalformedBody, InvalidArgument)


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 1000, 5000, 100_000])
def test_deep_nesting_is_refused_not_recursed(depth: int) -> None:
    with pytest.raises(MalformedBody, match="nested deeper"):
        parse_json(b"[" * depth + b"]" * depth)


def test_nesting_up_to_the_bound_is_accepted() -> None:
    raw = b'{"a":' * (MAX_DEPTH - 1) + b"[]" + b"}" * (MAX_DEPTH - 1)
    assert isinstance(parse_json(raw), dict)


def test_many_brackets_side_by_side_are_not_depth() -> None:
    raw = b"[" + b",".join([b"[[]]"] * 5000) + b"]"
    assert len(parse_json(raw)) == 5000


def test_brackets_inside_strings_do_not_count() -> None:
    raw = b'["' + b"[" * 5000 + b'"]'
    assert parse_json(raw) == ["[" * 5000]


def test_field_prefers_the_exact_key() -> None:
    assert field({"entryID": 1, "entryId": 2}, "entryId") == 2


def test_field_falls_back_to_the_first_case_folded_key() -> None:
    assert field({"ENTRYID": 1, "entryID": 2}, "entryId") == 1
    assert field({"EntryId": "x"}, "entryId") == "x"


def test_field_default_when_absent() -> None:
    assert field({"other": 1}, "entryId") is None
    assert field({}, "entryId", "d") == "d"


def test_field_present_with_null_is_not_the_default() -> None:
    assert field({"ENTRYID": None}, "entryId", "d") is None


def test_fields_maps_canonical_names_of_present_keys() -> None:
    obj = {"entryID": "1", "EVENT": {"a": 1}, "ContentType": "text/plain", "extra": 0}
    assert fields(obj, ["entryId", "event", "contentType", "metadata"]) == {
        "entryId": "1",
        "event": {"a": 1},
        "contentType": "text/plain",
    }
