"""``omnibus list`` and ``omnibus publish``: the running sidecars, found through presence.

Every sidecar announces ``Presence(name="omnibus.sidecar", address=<its HTTP API>,
metadata={app_id, app_port, pid, pubsub})`` on each pubsub it connected, so any process that opens
the same components sees who is up, on any backend.

``publish`` goes through a running sidecar's HTTP API when it can (``--sidecar``,
``--dapr-http-port``, or one found through presence: the sidecar of ``--app-id``, else any sidecar
on that pubsub), so the CloudEvent is built where every publish builds it, with that sidecar's
app id as its source.  With no sidecar running it publishes on the bus itself, building the same
envelope with the sidecar's own code (:func:`runtime.pubsub.publisher.make_message`), source
``--app-id``.
"""

from __future__ import annotations

import dataclasses
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rich.table import Table

from bus.broker import BaseBroker
from bus.errors import OmnibusError
from runtime.cli.sidecar_api import SidecarUnreachable, send
from runtime.pubsub.publisher import PublishContext, make_message

SIDECAR_PRESENCE = "omnibus.sidecar"


class PublishFailed(OmnibusError):
    """The sidecar refused or failed the publish; the message carries its error body."""


@dataclass(frozen=True, slots=True)
class Sidecar:
    """One live sidecar as its presence entries describe it."""

    app_id: str
    instance: str
    address: str
    app_port: str
    pid: str
    started: float
    pubsubs: tuple[str, ...]

    @property
    def http_port(self) -> str:
        """The port of the sidecar's HTTP API, from its address."""
        port = urllib.parse.urlsplit(self.address).port
        return str(port) if port is not None else "?"


async def live_sidecars(brokers: Mapping[str, BaseBroker]) -> list[Sidecar]:
    """The sidecars announced on any of ``brokers``, one row per sidecar instance."""
    found: dict[str, Sidecar] = {}
    for name, broker in brokers.items():
        for entry in await broker.instances(SIDECAR_PRESENCE):
            known = found.get(entry.instance)
            pubsub = entry.metadata.get("pubsub", name)
            if known is not None:
                if pubsub not in known.pubsubs:
                    pubsubs = (*known.pubsubs, pubsub)
                    found[entry.instance] = dataclasses.replace(known, pubsubs=pubsubs)
                continue
            found[entry.instance] = Sidecar(
                app_id=entry.metadata.get("app_id", "?"),
                instance=entry.instance,
                address=entry.address,
                app_port=entry.metadata.get("app_port", "") or "-",
                pid=entry.metadata.get("pid", "?"),
                started=entry.started,
                pubsubs=(pubsub,),
            )
    return sorted(found.values(), key=lambda s: (s.app_id, s.started))


def age(seconds: float) -> str:
    """``42s``, ``5m07s``, ``3h02m``: how long a sidecar has been up."""
    seconds = max(int(seconds), 0)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def sidecar_table(sidecars: Sequence[Sidecar], now: float | None = None) -> Table:
    """The table ``omnibus list`` prints."""
    now = time.time() if now is None else now
    table = Table("APP ID", "INSTANCE", "HTTP PORT", "APP PORT", "PID", "AGE", "PUBSUB")
    for s in sidecars:
        table.add_row(
            s.app_id,
            s.instance,
            s.http_port,
            s.app_port,
            s.pid,
            age(now - s.started),
            ", ".join(s.pubsubs),
        )
    return table


def choose_sidecar(sidecars: Sequence[Sidecar], pubsub: str, app_id: str | None) -> Sidecar | None:
    """The sidecar of ``app_id`` if given, else the newest sidecar connected to ``pubsub``."""
    candidates = [s for s in sidecars if pubsub in s.pubsubs]
    if app_id is not None:
        candidates = [s for s in candidates if s.app_id == app_id]
    return max(candidates, key=lambda s: s.started, default=None)


def publish_via_sidecar(
    base_url: str,
    pubsub: str,
    topic: str,
    data: bytes,
    *,
    content_type: str,
    metadata: Mapping[str, str],
    api_token: str | None = None,
    timeout: float = 30.0,
) -> None:
    """``POST /v1.0/publish/{pubsub}/{topic}`` on a sidecar; raises :class:`PublishFailed`.

    ``api_token`` is sent instead of ``DAPR_API_TOKEN`` (which is sent when it is set).
    """
    path = "/v1.0/publish/{}/{}".format(
        urllib.parse.quote(pubsub, safe=""), urllib.parse.quote(topic, safe="/")
    )
    query = urllib.parse.urlencode({f"metadata.{k}": v for k, v in metadata.items()})
    url = base_url.rstrip("/") + path + (f"?{query}" if query else "")
    headers = [("Content-Type", content_type)]
    if api_token:
        headers.append(("dapr-api-token", api_token))
    try:
        answer = send("POST", url, headers=headers, body=data, timeout=timeout)
    except SidecarUnreachable as exc:
        raise PublishFailed(str(exc)) from exc
    if not answer.ok:
        raise PublishFailed(f"{url}: {answer.status} {answer.error()}")
    if answer.status != 204:
        raise PublishFailed(f"{url}: unexpected status {answer.status}")


async def publish_on_bus(
    broker: BaseBroker,
    pubsub: str,
    topic: str,
    data: bytes,
    *,
    content_type: str,
    metadata: Mapping[str, str],
    source: str,
) -> str:
    """Publish as a sidecar would (same envelope), straight on the bus; returns the event id."""
    message = make_message(
        data, content_type, metadata, PublishContext(pubsubname=pubsub, topic=topic, source=source)
    )
    await broker.publish(topic, [message])
    return message.id
