"""Talking to a running sidecar's HTTP API from the command line: which one, and one request.

``omnibus invoke``, ``omnibus invocations`` and ``omnibus state`` go through a sidecar: the one at
``--sidecar URL`` or ``--dapr-http-port PORT``, else the newest one found through presence on the
pubsubs of the resources path (of ``--app-id`` when given).  ``omnibus publish`` sends its
request here too.  Every request carries ``DAPR_API_TOKEN`` when it is set (a ``dapr-api-token``
header the caller gives wins); an HTTP error status is an :class:`Answer` like any other, and
only a sidecar that cannot be reached raises :class:`SidecarUnreachable`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass

from bus.errors import OmnibusError


class SidecarUnreachable(OmnibusError):
    """No running sidecar was found, or the one named could not be reached."""


@dataclass(frozen=True, slots=True)
class Answer:
    """A sidecar's HTTP answer: status, headers as sent, body."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def ok(self) -> bool:
        """True for a 2xx status."""
        return 200 <= self.status < 300

    def header(self, name: str) -> str | None:
        """The first value of header ``name``."""
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def json(self) -> object:
        """The body as JSON."""
        return json.loads(self.body)

    def error(self) -> str:
        """Dapr's ``ERR_...: message`` of an error body, else the body as text."""
        try:
            body = self.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and "errorCode" in body:
            return f"{body['errorCode']}: {body.get('message', '')}"
        return self.body.decode(errors="replace").strip()


def send(
    method: str,
    url: str,
    *,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes | None = None,
    timeout: float = 30.0,
) -> Answer:
    """One request; an HTTP error status is an answer too, a connection error raises."""
    request = urllib.request.Request(url, data=body or None, method=method)
    if token := os.environ.get("DAPR_API_TOKEN"):
        request.add_header("dapr-api-token", token)
    for name, value in headers:  # after the token: a header with the same name replaces it
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Answer(response.status, list(response.headers.items()), response.read())
    except urllib.error.HTTPError as exc:
        return Answer(exc.code, list(exc.headers.items()), exc.read())
    except OSError as exc:
        raise SidecarUnreachable(f"{url}: {exc}") from exc


def sidecar_url(args: argparse.Namespace, app_id: str | None = None) -> str:
    """The base URL of the sidecar to ask: given, else the newest live one (of ``app_id``)."""
    if args.sidecar:
        return str(args.sidecar).rstrip("/")
    if args.dapr_http_port:
        return f"http://127.0.0.1:{args.dapr_http_port}"
    from runtime.cli.resources import open_pubsubs
    from runtime.cli.sidecars import live_sidecars

    async def find() -> str | None:
        async with open_pubsubs(args.resources_path, environ=os.environ) as brokers:
            sidecars = await live_sidecars(brokers)
        mine = [s for s in sidecars if app_id is None or s.app_id == app_id]
        newest = max(mine, key=lambda s: s.started, default=None)
        return None if newest is None else newest.address

    found = asyncio.run(find())
    if found is None:
        which = f"of app {app_id!r} " if app_id else ""
        raise SidecarUnreachable(
            f"no running sidecar {which}found (start one with 'omnibus run', or pass "
            "--sidecar URL or --dapr-http-port PORT)"
        )
    return found.rstrip("/")
