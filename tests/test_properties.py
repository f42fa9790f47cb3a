"""Property tests (hypothesis) of the parsers that read untrusted input.

Component files, metadata values (durations, booleans), CloudEvents and bulk publish bodies:
whatever they are given, they answer or raise an error of omnibus's tree (OmnibusError), never
anything else; and where a value has a written form, reading it back gives the value.

Derandomized with a bounded number of examples, so every run tries the same inputs.
"""

from __future__ import annotations

import base64
import json
import string
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bus.errors import ConfigError, InvalidArgument, OmnibusError
from bus.message import Outcome
from bus.options import parse_bool, parse_duration
from components.loader import load_resources, parse_programmatic
from runtime.api.body import MAX_DEPTH, MalformedBody, NestedTooDeep, field, parse_json
from runtime.pubsub.bulk_delivery import entry_outcomes
from runtime.pubsub.cloudevents import (
    EventAttributes,
    from_cloudevent,
    has_expired,
    new_envelope,
    parse_ttl,
    rfc3339,
)
from runtime.pubsub.publisher import parse_bulk

PROPERTIES = settings(
    max_examples=150,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# JSON values as Python objects (finite floats: JSON has no NaN).
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
content_types = st.sampled_from(
    [
        "",
        "application/json",
        "Application/JSON; charset=utf-8",
        "application/cloudevents+json",
        "application/vnd.api+json",
        "text/plain",
        "application/octet-stream",
        "application/x-protobuf",
        "image/png",
    ]
) | st.text(max_size=30)
names = st.from_regex(r"[a-z][a-z0-9-]{0,15}", fullmatch=True)


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


# -- component files ----------------------------------------------------------------------------


def load_text(text: str | bytes) -> Any:
    """Load one resource file with ``text``; the resources, or the ConfigError raised."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory, "resource.yaml")
        path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
        try:
            return load_resources([path], app_id="checkout", environ={"PASSWORD": "s3cret"})
        except ConfigError as exc:
            return exc


documents = st.fixed_dictionaries(
    {
        "apiVersion": st.sampled_from(["dapr.io/v1alpha1", "dapr.io/v2alpha1", "v1"]),
        "kind": st.sampled_from(["Component", "Subscription", "Resiliency", "Configuration"]),
    },
    optional={
        "metadata": st.fixed_dictionaries({}, optional={"name": json_values | names}),
        "spec": st.dictionaries(
            st.sampled_from(
                [
                    "type",
                    "version",
                    "metadata",
                    "pubsubname",
                    "topic",
                    "route",
                    "routes",
                    "policies",
                    "targets",
                    "deadLetterTopic",
                    "bulkSubscribe",
                ]
            ),
            json_values,
            max_size=6,
        ),
        "scopes": json_values,
        "auth": json_values,
    },
)


@PROPERTIES
@given(st.binary(max_size=200) | st.text(max_size=200))
@example(b"\xff\xfe")
@example("a: [")
@example("- " * 300)
def test_any_file_loads_or_is_a_config_error(text: str | bytes) -> None:
    load_text(text)


@PROPERTIES
@given(st.lists(documents, min_size=1, max_size=3))
def test_any_resource_document_loads_or_is_a_config_error(docs: list[dict[str, Any]]) -> None:
    load_text(yaml.safe_dump_all(docs))


component_metadata = st.dictionaries(
    st.from_regex(r"[A-Za-z][A-Za-z0-9]{0,12}", fullmatch=True),
    st.text(alphabet=string.printable.replace("{", ""), max_size=20)
    | st.integers(min_value=-(10**6), max_value=10**6)
    | st.booleans(),
    max_size=5,
)


@PROPERTIES
@given(
    names,
    st.sampled_from(["pubsub.redis", "pubsub.sqlite", "state.in-memory", "state.redis"]),
    component_metadata,
)
def test_a_component_round_trips_through_its_file(
    name: str, type_: str, metadata: dict[str, str | int | bool]
) -> None:
    doc = {
        "apiVersion": "dapr.io/v1alpha1",
        "kind": "Component",
        "metadata": {"name": name},
        "spec": {
            "type": type_,
            "version": "v1",
            "metadata": [{"name": k, "value": v} for k, v in metadata.items()]
            + [{"name": "secret", "secretKeyRef": {"name": "PASSWORD"}}],
        },
    }
    loaded = load_text(yaml.safe_dump(doc))
    assert not isinstance(loaded, ConfigError), loaded
    (component,) = loaded.components
    assert (component.name, component.type, component.version) == (name, type_, "v1")
    rendered = {k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in metadata.items()}
    assert dict(component.metadata) == {**rendered, "secret": "s3cret"}


@PROPERTIES
@given(
    json_values
    | st.lists(
        st.dictionaries(
            st.sampled_from(
                [
                    "pubsubname",
                    "topic",
                    "route",
                    "routes",
                    "metadata",
                    "deadLetterTopic",
                    "bulkSubscribe",
                ]
            ),
            json_values,
        ),
        max_size=3,
    )
)
def test_any_programmatic_subscription_reply_parses_or_is_a_config_error(payload: Any) -> None:
    try:
        parse_programmatic(payload)
    except ConfigError:
        pass


# -- metadata: durations and booleans -------------------------------------------------------------


@PROPERTIES
@given(
    st.text(max_size=30)
    | st.from_regex(r"(\d{1,4}(\.\d{1,3})?(h|m|s|ms|us|µs|ns)){1,4}", fullmatch=True)
    | st.integers(min_value=-(10**12), max_value=10**12)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.booleans()
    | st.none()
)
def test_a_duration_is_non_negative_seconds_or_invalid(value: object) -> None:
    # NaN and infinity are left out: parse_duration returns them as they are (reported).
    try:
        seconds = parse_duration(value, what="processingTimeout")
    except InvalidArgument as exc:
        assert "processingTimeout" in str(exc)
        return
    assert seconds >= 0


@PROPERTIES
@given(
    st.integers(min_value=0, max_value=99),
    st.integers(min_value=0, max_value=59),
    st.integers(min_value=0, max_value=59),
    st.integers(min_value=0, max_value=999),
)
def test_a_go_duration_reads_back_as_its_seconds(h: int, m: int, s: int, ms: int) -> None:
    text = f"{h}h{m}m{s}s{ms}ms"
    expected = h * 3600 + m * 60 + s + ms / 1000
    assert parse_duration(text) == pytest.approx(expected)
    assert parse_duration(str(ms)) == pytest.approx(ms / 1000)  # a bare number is milliseconds
    assert parse_duration(ms) == pytest.approx(ms / 1000)


@PROPERTIES
@given(st.text(max_size=12))
def test_a_boolean_is_read_or_is_a_config_error(text: str) -> None:
    try:
        value = parse_bool(text, what="enableTLS")
    except ConfigError as exc:
        assert "enableTLS" in str(exc)
        return
    assert isinstance(value, bool)


words = st.sampled_from(["1", "t", "true", "y", "yes", "on", "0", "f", "false", "n", "no", "off"])


@PROPERTIES
@given(words, st.data())
def test_a_boolean_word_reads_back_in_any_case_and_spacing(word: str, data: st.DataObject) -> None:
    spelled = "".join(data.draw(st.sampled_from([c.lower(), c.upper()])) for c in word)
    padded = (
        data.draw(st.sampled_from(["", " ", "\t"]))
        + spelled
        + data.draw(st.sampled_from(["", " \n"]))
    )
    assert parse_bool(padded, what="x") is (word in {"1", "t", "true", "y", "yes", "on"})


# -- CloudEvents ----------------------------------------------------------------------------------


metadata_maps = st.dictionaries(
    st.sampled_from(
        [
            "ttlInSeconds",
            "rawPayload",
            "cloudevent.id",
            "cloudevent.source",
            "cloudevent.type",
            "cloudevent.subject",
            "cloudevent.traceparent",
            "cloudevent.traceid",
            "cloudevent.tracestate",
            "routingKey",
        ]
    ),
    st.text(max_size=12) | st.integers(min_value=-5, max_value=10**20).map(str),
    max_size=4,
)


def envelope_of(
    data: bytes, content_type: str | None, metadata: dict[str, str]
) -> tuple[str, dict[str, Any]] | OmnibusError:
    """The envelope of one publish, or the error of omnibus's tree it raised."""
    try:
        attrs = EventAttributes.from_metadata(metadata, None, None)
        if content_type == "application/cloudevents+json":
            event_id, raw = from_cloudevent(
                data, topic="orders", pubsubname="pubsub", source="checkout", attrs=attrs
            )
        else:
            event_id, raw = new_envelope(
                data,
                content_type,
                topic="orders",
                pubsubname="pubsub",
                source="checkout",
                attrs=attrs,
            )
    except OmnibusError as exc:
        return exc
    envelope = orjson.loads(raw)
    assert envelope["id"] == event_id
    return event_id, envelope


payloads = (
    st.binary(max_size=64)
    | json_values.map(orjson.dumps)
    | st.integers(min_value=MAX_DEPTH - 2, max_value=MAX_DEPTH + 300).map(nested)
    | st.text(max_size=40).map(str.encode)
)


@PROPERTIES
@given(payloads, content_types | st.none(), metadata_maps)
@example(nested(5000), "application/json", {})
@example(nested(5000), "application/cloudevents+json", {})
@example(b"[" * 5000, "application/json", {})
@example(b'{"a": 123456789012345678901234567890}', "application/json", {})
@example(b"{}", "application/json", {"ttlInSeconds": "99999999999999"})  # beyond a datetime
def test_any_publish_is_an_envelope_or_an_omnibus_error(
    data: bytes, content_type: str | None, metadata: dict[str, str]
) -> None:
    result = envelope_of(data, content_type, metadata)
    if isinstance(result, OmnibusError):
        return
    _, envelope = result
    assert envelope["topic"] == "orders" and envelope["pubsubname"] == "pubsub"
    for key in ("id", "source", "type", "specversion"):
        assert isinstance(envelope[key], str) and envelope[key], key


@PROPERTIES
@given(json_values)
def test_a_json_payload_round_trips_through_its_envelope(value: Any) -> None:
    result = envelope_of(orjson.dumps(value), "application/json", {})
    assert not isinstance(result, OmnibusError), result
    assert result[1]["data"] == value
    assert result[1]["datacontenttype"] == "application/json"


@PROPERTIES
@given(st.binary(max_size=64), st.sampled_from(["application/octet-stream", "text/plain", "x/y"]))
def test_binary_and_text_payloads_round_trip_through_their_envelope(
    data: bytes, content_type: str
) -> None:
    result = envelope_of(data, content_type, {})
    assert not isinstance(result, OmnibusError), result
    envelope = result[1]
    if "data_base64" in envelope:
        assert base64.b64decode(envelope["data_base64"]) == data
    else:
        assert envelope["data"].encode("utf-8") == data


@PROPERTIES
@given(st.dictionaries(st.text(max_size=8), json_values, max_size=5), metadata_maps)
def test_a_callers_cloudevent_keeps_its_fields(
    event: dict[str, Any], metadata: dict[str, str]
) -> None:
    result = envelope_of(orjson.dumps(event), "application/cloudevents+json", metadata)
    if isinstance(result, OmnibusError):
        assert "ttlInSeconds" in metadata, result  # only a bad TTL may refuse a JSON object
        return
    _, envelope = result
    overridden = {
        "topic",
        "pubsubname",
        "id",
        "source",
        "type",
        "subject",
        "specversion",
        "time",
        "traceid",
        "traceparent",
        "tracestate",
        "expiration",
    }
    for key, value in event.items():
        if key not in overridden:
            assert envelope[key] == value


@PROPERTIES
@given(st.text(max_size=12) | st.none())
def test_a_ttl_is_a_non_negative_integer_or_a_request_error(value: str | None) -> None:
    try:
        ttl = parse_ttl(value)
    except InvalidArgument:
        return
    assert ttl is None or ttl >= 0


@PROPERTIES
@given(st.dictionaries(st.sampled_from(["expiration", "id"]), json_values))
def test_expiry_of_any_envelope_is_a_boolean(envelope: dict[str, Any]) -> None:
    assert has_expired(envelope) in (True, False)


@PROPERTIES
@given(
    st.datetimes(
        min_value=datetime(1970, 1, 2), max_value=datetime(9998, 1, 1), timezones=st.just(UTC)
    )
)
def test_an_expiration_reads_back_as_its_moment(moment: datetime) -> None:
    envelope = {"expiration": rfc3339(moment)}
    assert has_expired(envelope, now=moment + timedelta(seconds=1))
    assert not has_expired(envelope, now=moment - timedelta(seconds=1))


# -- request bodies and bulk publish --------------------------------------------------------------


@PROPERTIES
@given(st.binary(max_size=100) | json_values.map(orjson.dumps) | st.integers(1, 3000).map(nested))
def test_any_body_is_json_or_malformed(raw: bytes) -> None:
    try:
        value = parse_json(raw)
    except MalformedBody:
        return
    assert orjson.loads(orjson.dumps(value)) == value  # what was read can be written back


entries = st.fixed_dictionaries(
    {},
    optional={
        "entryId": st.text(max_size=6) | json_values,
        "entryID": st.text(max_size=6),
        "event": json_values
        | st.integers(MAX_DEPTH - 5, MAX_DEPTH + 5).map(lambda d: json.loads(nested(d))),
        "contentType": content_types | json_values,
        "metadata": st.dictionaries(st.text(max_size=6), st.text(max_size=6)) | json_values,
    },
)


@PROPERTIES
@given(st.lists(entries, max_size=4) | json_values)
def test_any_bulk_body_parses_or_is_invalid(payload: Any) -> None:
    raw = (
        orjson.dumps(payload, option=orjson.OPT_PASSTHROUGH_SUBCLASS)
        if _depth(payload) < 250
        else b"[]"
    )
    try:
        parse_bulk(parse_json(raw))  # as the bulk publish route reads its body
    except InvalidArgument:
        pass


def _depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    return 0


@PROPERTIES
@given(
    st.lists(
        st.tuples(
            st.text(min_size=1, max_size=8),
            json_values,
            st.sampled_from(["entryId", "entryID", "ENTRYID"]),
        ),
        max_size=5,
        unique_by=lambda t: t[0],
    )
)
def test_bulk_entries_round_trip(items: list[tuple[str, Any, str]]) -> None:
    body = [{spelling: entry_id, "event": event} for entry_id, event, spelling in items]
    parsed = parse_bulk(parse_json(orjson.dumps(body)))
    assert [e.entry_id for e in parsed] == [entry_id for entry_id, _, _ in items]
    for entry, (_, event, _) in zip(parsed, items, strict=True):
        if isinstance(event, str):
            assert entry.content_type == "text/plain" and entry.data == event.encode()
        else:
            assert entry.content_type == "application/json" and orjson.loads(entry.data) == event


@PROPERTIES
@given(
    st.integers(100, 599),
    st.binary(max_size=60) | json_values.map(orjson.dumps),
    st.lists(st.text(max_size=4), max_size=4, unique=True),
)
def test_any_bulk_answer_of_the_app_gives_every_entry_an_outcome(
    status: int, body: bytes, ids: list[str]
) -> None:
    outcomes = entry_outcomes(status, body, ids)
    assert set(outcomes) == set(ids)
    assert all(isinstance(o, Outcome) for o in outcomes.values())


@PROPERTIES
@given(st.sampled_from(["entryId", "contentType", "metadata"]), st.data())
def test_fields_match_in_any_case_as_gos_decoder_does(name: str, data: st.DataObject) -> None:
    spelled = "".join(data.draw(st.sampled_from([c.lower(), c.upper()])) for c in name)
    assert field({spelled: 1}, name) == 1
    assert field({spelled: 1, name: 2}, name) == 2  # the exact name wins


def test_nesting_beyond_the_bound_is_refused_not_recursed() -> None:
    with pytest.raises(NestedTooDeep):
        parse_json(nested(MAX_DEPTH + 1))
    assert parse_json(nested(MAX_DEPTH)) is not None
