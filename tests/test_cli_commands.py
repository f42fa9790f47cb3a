"""``omnibus init``, ``list``, ``publish`` and ``dlq`` through ``main``, on an embedded bus file.

The commands open the pubsub components of a resources directory, as the sidecar does; the tests
use a SQLite component in a temporary directory and a second broker on the same file to play the
part of a running sidecar.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bus.message import Message
from bus.presence import Presence
from bus.sqlite import SqliteBroker, SqliteSettings
from runtime.cli import main
from runtime.cli.sidecars import SIDECAR_PRESENCE

COMPONENT = """\
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: pubsub
spec:
  type: pubsub.sqlite
  version: v1
  metadata:
    - name: connectionString
      value: "{path}"
"""


@pytest.fixture(autouse=True)
def wide_output(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # rich tables are not cut at 80 columns
    monkeypatch.setenv("OMNIBUS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DAPR_API_TOKEN", raising=False)


@pytest.fixture
def resources(tmp_path: Path) -> Path:
    directory = tmp_path / "components"
    directory.mkdir()
    (directory / "pubsub.yaml").write_text(COMPONENT.format(path=tmp_path / "bus.db"))
    return directory


@pytest.fixture
def bus(tmp_path: Path) -> SqliteBroker:
    """A broker on the same file as the component (not connected: each test runs it)."""
    return peer(tmp_path)


def peer(tmp_path: Path) -> SqliteBroker:
    return SqliteBroker(SqliteSettings(path=tmp_path / "bus.db"), instance="peer")


SIDECAR_METADATA = {"app_id": "orders", "app_port": "5001", "pid": "4242", "pubsub": "pubsub"}


def omnibus(*argv: str) -> int:
    return main(list(argv))


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["run"],
        ["init"],
        ["list"],
        ["publish"],
        ["dlq"],
        ["dlq", "list"],
        ["dlq", "replay"],
        ["bench"],
    ],
)
def test_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        omnibus(*command, "--help")
    assert exc.value.code == 0
    assert f"usage: omnibus {' '.join(command)}".strip() in capsys.readouterr().out


def test_init_is_idempotent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert omnibus("init") == 0
    first = capsys.readouterr().out
    pubsub = tmp_path / "home" / "components" / "pubsub.yaml"
    assert f"wrote the default components in {pubsub.parent}" in first
    assert "pubsub.yaml" in first and "pubsub.sqlite" in pubsub.read_text()
    pubsub.write_text(pubsub.read_text() + "# edited\n")

    assert omnibus("init") == 0

    assert "already had the default components" in capsys.readouterr().out
    assert pubsub.read_text().endswith("# edited\n")  # never overwritten


def test_list_without_sidecars(resources: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert omnibus("list", "--resources-path", str(resources)) == 0
    assert "no sidecars running (pubsub components looked at: pubsub)" in capsys.readouterr().out


async def test_list_shows_live_sidecars(
    resources: Path, bus: SqliteBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    async with bus:
        await bus.announce(
            Presence(
                name=SIDECAR_PRESENCE,
                instance="orders-1",
                address="http://127.0.0.1:3999",
                metadata=SIDECAR_METADATA,
            )
        )
        assert await asyncio.to_thread(omnibus, "list", "--resources-path", str(resources)) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if "orders-1" in line)
    for cell in ("orders", "3999", "5001", "4242", "pubsub"):
        assert cell in row


def test_publish_directly_without_sidecar(
    resources: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = omnibus(
        "publish", "--pubsub", "pubsub", "--topic", "orders", "--data", '{"orderId": 1}',
        "--metadata", "cloudevent.type=order.created", "--resources-path", str(resources),
    )  # fmt: skip

    assert code == 0
    assert "directly on the bus (no sidecar running)" in capsys.readouterr().out
    (message,) = asyncio.run(_browse(peer(tmp_path), "orders"))
    event = json.loads(message.data)
    assert event["data"] == {"orderId": 1} and event["type"] == "order.created"
    assert event["source"] == "omnibus" and event["pubsubname"] == "pubsub"


class _PublishRecorder(BaseHTTPRequestHandler):
    paths: list[str] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.paths.append(self.path)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_sidecar_api() -> Iterator[tuple[str, list[str]]]:
    handler = type("Handler", (_PublishRecorder,), {"paths": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler.paths
    server.shutdown()
    server.server_close()


async def test_publish_goes_through_a_live_sidecar(
    resources: Path,
    bus: SqliteBroker,
    fake_sidecar_api: tuple[str, list[str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given a sidecar of app "orders" announced on the pubsub
    url, paths = fake_sidecar_api
    entry = Presence(
        name=SIDECAR_PRESENCE,
        instance="orders-1",
        address=url,
        metadata={"app_id": "orders", "pubsub": "pubsub"},
    )
    async with bus:
        await bus.announce(entry)
        # When omnibus publish runs
        argv = ["publish", "--pubsub", "pubsub", "--topic", "orders", "--data", "{}"]
        code = await asyncio.to_thread(omnibus, *argv, "--resources-path", str(resources))
        # Then the publish went to that sidecar's API, not on the bus
        assert code == 0
        assert paths == ["/v1.0/publish/pubsub/orders"]
        assert await bus.browse("orders") == []
    assert f"through the sidecar of 'orders' at {url}" in capsys.readouterr().out


def test_publish_rejects_bad_input(resources: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["publish", "--pubsub", "pubsub", "--topic", "orders"]
    base += ["--resources-path", str(resources)]
    with pytest.raises(SystemExit) as exc:
        omnibus(*base, "--data", "{not json")
    assert exc.value.code == 2
    assert "not valid JSON" in capsys.readouterr().err

    assert omnibus(*base[:2], "nope", *base[3:], "--data", "{}") == 1
    assert "no pubsub component named 'nope'" in capsys.readouterr().err


def test_dlq_list_and_replay(
    resources: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given two dead letters of "orders"
    letters = [
        Message(data=json.dumps({"specversion": "1.0", "data": {"orderId": n}}).encode())
        for n in (1, 2)
    ]
    asyncio.run(_publish(peer(tmp_path), "orders.deadletter", letters))
    where = ["--pubsub", "pubsub", "--topic", "orders", "--resources-path", str(resources)]

    # When they are listed, then replayed
    assert omnibus("dlq", "list", *where) == 0
    listed = capsys.readouterr().out
    assert omnibus("dlq", "replay", *where, "--wait", "0.5") == 0
    replayed = capsys.readouterr().out
    assert omnibus("dlq", "replay", *where, "--wait", "0.5") == 0
    again = capsys.readouterr().out
    assert omnibus("dlq", "list", *where) == 0
    listed_after = capsys.readouterr().out

    # Then the list showed both, and each went back to "orders" exactly once
    assert "pubsub/orders.deadletter" in listed
    for letter in letters:
        assert letter.id in listed
    assert '{"orderId":1}' in listed and '{"orderId":2}' in listed
    assert "replayed 2 dead letter(s) from pubsub/orders.deadletter to orders" in replayed
    assert "replayed 0 dead letter(s)" in again
    assert "no dead letters on pubsub/orders.deadletter" in listed_after
    assert [m.data for m in asyncio.run(_browse(peer(tmp_path), "orders"))] == [
        m.data for m in letters
    ]


def test_dlq_list_empty(resources: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["dlq", "list", "--pubsub", "pubsub", "--topic", "orders", "--dead-letter-topic", "dl"]
    assert omnibus(*argv, "--resources-path", str(resources)) == 0
    assert "no dead letters on pubsub/dl" in capsys.readouterr().out


async def _publish(bus: SqliteBroker, topic: str, messages: list[Message]) -> None:
    async with bus:
        await bus.publish(topic, messages)


async def _browse(bus: SqliteBroker, topic: str) -> list[Message]:
    async with bus:
        return await bus.browse(topic)


def test_publish_text_from_a_file(
    resources: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    payload = tmp_path / "note.txt"
    payload.write_text("hello, {not json}")

    code = omnibus(
        "publish", "--pubsub", "pubsub", "--topic", "notes", "--data-file", str(payload),
        "--content-type", "text/plain", "--app-id", "notes-cli", "--resources-path", str(resources),
    )  # fmt: skip

    assert code == 0
    (message,) = asyncio.run(_browse(peer(tmp_path), "notes"))
    event = json.loads(message.data)
    assert event["data"] == "hello, {not json}" and event["datacontenttype"] == "text/plain"
    assert event["source"] == "notes-cli"


def test_bench_is_the_harness(capsys: pytest.CaptureFixture[str]) -> None:
    # Options are the harness's own; a bad one is refused before anything is started.
    assert omnibus("bench", "--backends", "nope") == 2
    assert "--backends" in capsys.readouterr().err
