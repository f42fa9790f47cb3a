"""The subscriber app of the end-to-end scenarios: raw asyncio + httptools, so it is never the
bottleneck.

- ``GET /dapr/subscribe``: one subscription per ``--topics`` entry (route ``/events``) and one
  bulk subscription per ``--bulk-topics`` entry (route ``/bulk``, ``bulkSubscribe`` enabled).
- ``POST /events``, ``POST /bulk``: count each delivered message by topic and id, record its
  latency (receive time minus the ``t`` it carries), answer SUCCESS for every message.
- ``GET /stats?topic=T[&latencies=1]``: the counters of ``T`` as JSON; ``POST /reset?topic=T``.

Run: ``python -m benchmarks.apps.subscriber --port P --pubsub pubsub --topics a --bulk-topics b``.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

import httptools
import orjson

from benchmarks.payload import stamp_of

_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found"}


@dataclass(slots=True)
class TopicStats:
    """Deliveries seen on one topic."""

    count: int = 0
    ids: set[int] = field(default_factory=set)
    first_ns: int = 0
    last_ns: int = 0
    latencies_us: list[int] = field(default_factory=list)

    def record(self, stamp: tuple[int, int] | None, now_ns: int) -> None:
        """Count one delivery received at ``now_ns``."""
        self.count += 1
        if not self.first_ns:
            self.first_ns = now_ns
        self.last_ns = now_ns
        if stamp is not None:
            sent_ns, ident = stamp
            self.ids.add(ident)
            self.latencies_us.append((now_ns - sent_ns) // 1000)

    def to_json(self, latencies: bool) -> dict[str, Any]:
        """Counters, and the latencies when asked for."""
        body: dict[str, Any] = {
            "count": self.count,
            "unique": len(self.ids),
            "first_ns": self.first_ns,
            "last_ns": self.last_ns,
        }
        if latencies:
            body["latencies_us"] = self.latencies_us
        return body


class SubscriberApp:
    """Routes requests; holds the counters of every topic."""

    def __init__(self, pubsub: str, topics: list[str], bulk_topics: list[str]) -> None:
        self.pubsub = pubsub
        self.topics = topics
        self.bulk_topics = bulk_topics
        self.stats: dict[str, TopicStats] = {}

    def handle(self, method: bytes, url: bytes, body: bytes) -> tuple[int, bytes]:
        """Answer one request: (status, JSON body)."""
        now_ns = time.monotonic_ns()
        parts = urlsplit(url.decode())
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        if method == b"POST" and parts.path == "/events":
            return 200, self._single(body, now_ns)
        if method == b"POST" and parts.path == "/bulk":
            return 200, self._bulk(body, now_ns)
        if parts.path == "/dapr/subscribe":
            return 200, orjson.dumps(self._subscriptions())
        if parts.path == "/stats":
            stats = self.stats.get(query.get("topic", ""), TopicStats())
            return 200, orjson.dumps(stats.to_json("latencies" in query))
        if method == b"POST" and parts.path == "/reset":
            self.stats.pop(query.get("topic", ""), None)
            return 200, b"{}"
        if parts.path == "/healthz":
            return 200, b"{}"
        return 404, b"{}"

    def _topic(self, name: str) -> TopicStats:
        stats = self.stats.get(name)
        if stats is None:
            stats = self.stats[name] = TopicStats()
        return stats

    def _single(self, body: bytes, now_ns: int) -> bytes:
        event = orjson.loads(body)
        self._topic(str(event.get("topic", ""))).record(stamp_of(event), now_ns)
        return b'{"status":"SUCCESS"}'

    def _bulk(self, body: bytes, now_ns: int) -> bytes:
        request = orjson.loads(body)
        stats = self._topic(str(request.get("topic", "")))
        statuses = []
        for entry in request.get("entries", []):
            stats.record(stamp_of(entry.get("event")), now_ns)
            statuses.append({"entryId": entry.get("entryId"), "status": "SUCCESS"})
        return orjson.dumps({"statuses": statuses})

    def _subscriptions(self) -> list[dict[str, Any]]:
        single = [{"pubsubname": self.pubsub, "topic": t, "route": "/events"} for t in self.topics]
        bulk = [
            {
                "pubsubname": self.pubsub,
                "topic": t,
                "route": "/bulk",
                "bulkSubscribe": {
                    "enabled": True,
                    "maxMessagesCount": 100,
                    "maxAwaitDurationMs": 40,
                },
            }
            for t in self.bulk_topics
        ]
        return single + bulk


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, parsed by httptools."""

    def __init__(self, app: SubscriberApp) -> None:
        self._app = app
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            assert self._transport is not None
            self._transport.close()

    def on_message_begin(self) -> None:
        self._url, self._body = b"", []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        assert self._transport is not None
        try:
            status, body = self._app.handle(
                self._parser.get_method(), self._url, b"".join(self._body)
            )
        except (ValueError, orjson.JSONDecodeError):
            status, body = 400, b'{"error":"bad request"}'
        head = b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        self._transport.write(head % (status, _REASONS.get(status, b"OK"), len(body)) + body)
        if not self._parser.should_keep_alive():
            self._transport.close()


async def serve(app: SubscriberApp, port: int) -> None:
    """Serve ``app`` on 127.0.0.1:``port`` until cancelled."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Connection(app), "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    """Serve until terminated."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pubsub", default="pubsub")
    parser.add_argument("--topics", default="")
    parser.add_argument("--bulk-topics", default="")
    args = parser.parse_args()
    app = SubscriberApp(
        args.pubsub,
        [t for t in args.topics.split(",") if t],
        [t for t in args.bulk_topics.split(",") if t],
    )
    import uvloop

    uvloop.run(serve(app, args.port))


if __name__ == "__main__":
    main()
