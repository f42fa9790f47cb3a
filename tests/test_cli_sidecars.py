"""``omnibus list`` / ``publish`` building blocks: presence of sidecars, publishing through one."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from rich.console import Console

from bus.memory import MemoryBroker, MemoryHub
from bus.presence import Presence
from runtime.cli.sidecars import (
    SIDECAR_PRESENCE,
    PublishFailed,
    Sidecar,
    age,
    choose_sidecar,
    live_sidecars,
    publish_on_bus,
    publish_via_sidecar,
    sidecar_table,
)


def sidecar_entry(instance: str, app_id: str, port: int, pubsub: str, started: float) -> Presence:
    return Presence(
        name=SIDECAR_PRESENCE,
        instance=instance,
        address=f"http://127.0.0.1:{port}",
        started=started,
        metadata={"app_id": app_id, "app_port": "", "pid": "42", "pubsub": pubsub},
    )


async def test_live_sidecars_one_row_per_instance() -> None:
    # Given two pubsubs on two servers, and sidecar "a1" connected to both
    async with MemoryBroker(MemoryHub()) as one, MemoryBroker(MemoryHub()) as two:
        await one.announce(sidecar_entry("a1", "orders", 3500, "pubsub", 100.0))
        await two.announce(sidecar_entry("a1", "orders", 3500, "events", 100.0))
        await two.announce(sidecar_entry("b1", "billing", 3600, "events", 50.0))
        await one.announce(Presence(name="some.service", instance="x"))  # not a sidecar

        sidecars = await live_sidecars({"pubsub": one, "events": two})

    assert [(s.app_id, s.instance, s.pubsubs) for s in sidecars] == [
        ("billing", "b1", ("events",)),
        ("orders", "a1", ("pubsub", "events")),
    ]
    assert sidecars[1].http_port == "3500" and sidecars[1].app_port == "-"


def make_sidecar(app_id: str, started: float, pubsubs: tuple[str, ...] = ("pubsub",)) -> Sidecar:
    address = "http://127.0.0.1:3500"
    return Sidecar(app_id, f"{app_id}-{started:g}", address, "-", "1", started, pubsubs)


def test_choose_sidecar() -> None:
    old, new = make_sidecar("orders", 1.0), make_sidecar("orders", 2.0)
    other = make_sidecar("billing", 3.0, ("events",))
    assert choose_sidecar([old, new, other], "pubsub", None) is new
    assert choose_sidecar([old, new, other], "events", None) is other
    assert choose_sidecar([old, new, other], "pubsub", "billing") is None
    assert choose_sidecar([], "pubsub", None) is None


def test_sidecar_table_and_age() -> None:
    buffer = io.StringIO()
    Console(file=buffer, width=200).print(sidecar_table([make_sidecar("orders", 1000.0)], 1065.0))
    text = buffer.getvalue()
    for cell in ("APP ID", "orders", "3500", "1m05s", "pubsub"):
        assert cell in text
    assert (age(5), age(65), age(3 * 3600 + 120)) == ("5s", "1m05s", "3h02m")


class _Recorder(BaseHTTPRequestHandler):
    status = 204
    body = b""
    seen: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        self.seen.append(
            {"path": self.path, "headers": self.headers, "body": self.rfile.read(length)}
        )
        self.send_response(self.status)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[tuple[str, type[_Recorder]]]:
    handler = type("Handler", (_Recorder,), {"seen": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


def test_publish_via_sidecar_sends_dapr_request(recorder: tuple[str, type[_Recorder]]) -> None:
    url, handler = recorder

    publish_via_sidecar(
        url,
        "pubsub",
        "orders/eu",
        b'{"orderId": 1}',
        content_type="application/json",
        metadata={"ttlInSeconds": "60"},
        api_token="secret",
    )

    (request,) = handler.seen
    assert request["path"] == "/v1.0/publish/pubsub/orders/eu?metadata.ttlInSeconds=60"
    assert request["headers"]["Content-Type"] == "application/json"
    assert request["headers"]["dapr-api-token"] == "secret"
    assert request["body"] == b'{"orderId": 1}'


def test_publish_via_sidecar_reports_dapr_errors(recorder: tuple[str, type[_Recorder]]) -> None:
    url, handler = recorder
    handler.status = 404
    handler.body = json.dumps(
        {"errorCode": "ERR_PUBSUB_NOT_FOUND", "message": "pubsub nope not found"}
    ).encode()

    with pytest.raises(PublishFailed, match="404 ERR_PUBSUB_NOT_FOUND: pubsub nope not found"):
        publish_via_sidecar(url, "nope", "t", b"{}", content_type="application/json", metadata={})


def test_publish_via_sidecar_unreachable() -> None:
    with pytest.raises(PublishFailed, match="127.0.0.1:1"):
        publish_via_sidecar(
            "http://127.0.0.1:1", "p", "t", b"{}", content_type="application/json", metadata={}
        )


async def test_publish_on_bus_builds_the_sidecar_envelope() -> None:
    async with MemoryBroker(MemoryHub()) as broker:
        event_id = await publish_on_bus(
            broker,
            "pubsub",
            "orders",
            b'{"orderId": 7}',
            content_type="application/json",
            metadata={"ttlInSeconds": "60"},
            source="omnibus",
        )
        (message,) = await broker.browse("orders")

    envelope = json.loads(message.data)
    assert message.id == event_id == envelope["id"]
    assert envelope["source"] == "omnibus" and envelope["type"] == "com.dapr.event.sent"
    assert envelope["topic"] == "orders" and envelope["pubsubname"] == "pubsub"
    assert envelope["data"] == {"orderId": 7} and "expiration" in envelope
