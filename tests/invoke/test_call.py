"""Calls and replies survive the trip through an envelope and its wire format."""

from __future__ import annotations

import pytest

from bus.envelope import Envelope, Headers
from bus.errors import InvalidArgument
from invoke import AppUnreachable, Call, Reply, async_topic, call_topic


def test_call_round_trips_through_the_wire_format() -> None:
    call = Call(
        app_id="nodeapp",
        method="orders/a%2Fb",
        verb="PATCH",
        query="x=1&x=2",
        headers=Headers([("X-A", "1"), ("x-a", "2")]),
        body=bytes(range(256)),
        caller="pythonapp",
        invocation_id="inv-1",
    )
    back = Call.from_envelope(Envelope.decode(call.to_envelope().encode()))
    assert back == call
    assert back.headers.get_all("X-A") == ["1", "2"]


def test_sync_call_has_no_invocation_id() -> None:
    call = Call("a", "m", "GET", "", Headers(), b"", "b")
    assert "iid" not in call.to_envelope().attributes
    assert Call.from_envelope(call.to_envelope()).invocation_id is None


def test_reply_round_trips() -> None:
    reply = Reply(409, Headers([("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")]), b"conflict")
    assert Reply.from_envelope(Envelope.decode(reply.to_envelope().encode())) == reply


def test_envelope_without_call_attributes_is_rejected() -> None:
    with pytest.raises(InvalidArgument):
        Call.from_envelope(Envelope(attributes={"app": "a"}))


def test_topics_differ_per_mode() -> None:
    assert call_topic("a") == "omnibus.invoke.a"
    assert async_topic("a") == "omnibus.invoke-async.a"


def test_app_unreachable_carries_its_code() -> None:
    exc = AppUnreachable("connection refused")
    assert exc.code == "APP_UNREACHABLE"
    assert exc.reason == "connection refused"
