"""The benchmark payload: a JSON object of a chosen size carrying a send time and an id.

``{"t": <time.monotonic_ns() at send>, "i": <unique int>, "p": "xxxx..."}``.  The monotonic clock
is one clock for every process of the machine, so the subscriber app can subtract ``t`` from its
own reading to get publish -> receive latency.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson

_SKELETON = b'{"t":%d,"i":%d,"p":""}'
ID_STRIDE = 1_000_000_000  # ids of generator process k start at k * ID_STRIDE


class PayloadFactory:
    """Builds single and bulk request bodies of about ``size`` bytes per message."""

    def __init__(self, size: int) -> None:
        overhead = len(_SKELETON % (10**18, 10**12))
        self._pad = b"x" * max(size - overhead, 0)

    def message(self, index: int, now_ns: int) -> bytes:
        """One payload."""
        return b'{"t":%d,"i":%d,"p":"%s"}' % (now_ns, index, self._pad)

    def bulk(self, first: int, count: int, now_ns: int) -> bytes:
        """A Dapr bulk-publish body of ``count`` entries with consecutive ids from ``first``."""
        entries = [
            b'{"entryId":"%d","event":%s,"contentType":"application/json"}'
            % (i, self.message(i, now_ns))
            for i in range(first, first + count)
        ]
        return b"[" + b",".join(entries) + b"]"


def stamp_of(event: Any) -> tuple[int, int] | None:
    """(send time ns, id) from a delivered CloudEvent (or raw payload), None if it has none."""
    if isinstance(event, bytes | str):
        try:
            event = orjson.loads(event)
        except orjson.JSONDecodeError:
            return None
    if not isinstance(event, dict):
        return None
    if "t" in event and "i" in event:
        return int(event["t"]), int(event["i"])
    data = event.get("data")
    if data is None and "data_base64" in event:
        data = base64.b64decode(event["data_base64"])
    return None if data is None else stamp_of(data)
