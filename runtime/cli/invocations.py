"""``omnibus invocations list|get ID|cancel ID``: an app's async invocations, through its sidecar.

Results are kept by the caller app's sidecars, so every command goes through a running sidecar
of that app: ``--sidecar URL`` or ``--dapr-http-port PORT``, else the newest sidecar of
``--app-id`` found through presence on the pubsubs of the resources path.  ``DAPR_API_TOKEN`` is
sent if set.

- ``list [--status S]``: a table of id, callee, method, status, attempts, created, finished;
- ``get ID``: the status; once finished, the recorded response (status line, headers, body);
  exit code 0 when found, 1 for an unknown id or an error;
- ``cancel ID``: cancels a pending invocation; 1 if it is unknown or already finished.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import TypeAlias

from rich.console import Console
from rich.table import Table

from bus.errors import OmnibusError

Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

PATH = "/v1.0-alpha1/invocations"


class SidecarNotFound(OmnibusError):
    """No running sidecar of the app could be found."""


@dataclass(frozen=True, slots=True)
class Answer:
    """A sidecar's HTTP answer."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def json(self) -> object:
        """The body as JSON."""
        return json.loads(self.body)


def add_invocations(commands: Commands) -> None:
    """``omnibus invocations``."""
    parser = commands.add_parser(
        "invocations",
        help="list, show or cancel an app's async invocations",
        description=(
            "Async invocations (sent with 'Prefer: respond-async') of one app, through a running "
            "sidecar of that app: --sidecar, --dapr-http-port, or the sidecar of --app-id found "
            "through presence."
        ),
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="list the app's invocations")
    listing.add_argument("--status", choices=("pending", "completed", "failed", "cancelled"))
    get = actions.add_parser("get", help="show one invocation and its result")
    get.add_argument("id", help="the invocation id (from the Location header)")
    cancel = actions.add_parser("cancel", help="cancel a pending invocation")
    cancel.add_argument("id", help="the invocation id")
    for sub in (listing, get, cancel):
        _target_options(sub)
    listing.set_defaults(handler=run_list)
    get.set_defaults(handler=run_get)
    cancel.set_defaults(handler=run_cancel)


def _target_options(parser: argparse.ArgumentParser) -> None:
    from runtime.cli.commands import _resources_option

    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--app-id", help="the caller app (its sidecar is found through presence)")
    target.add_argument("--sidecar", metavar="URL", help="a sidecar's base URL")
    target.add_argument("--dapr-http-port", type=int, metavar="PORT", help="a local sidecar's port")
    _resources_option(parser)


def sidecar_url(args: argparse.Namespace) -> str:
    """The base URL of the sidecar to ask (see the module docstring)."""
    if args.sidecar:
        return str(args.sidecar).rstrip("/")
    if args.dapr_http_port:
        return f"http://127.0.0.1:{args.dapr_http_port}"
    from runtime.cli.resources import open_pubsubs
    from runtime.cli.sidecars import live_sidecars

    async def find() -> str | None:
        async with open_pubsubs(args.resources_path, environ=os.environ) as brokers:
            mine = [s for s in await live_sidecars(brokers) if s.app_id == args.app_id]
        newest = max(mine, key=lambda s: s.started, default=None)
        return None if newest is None else newest.address

    found = asyncio.run(find())
    if found is None:
        raise SidecarNotFound(f"no running sidecar of app {args.app_id!r} was found")
    return found.rstrip("/")


def ask(url: str, method: str = "GET", timeout: float = 30.0) -> Answer:
    """One request to the sidecar; HTTP errors are answers too, connection errors raise."""
    headers = {}
    if token := os.environ.get("DAPR_API_TOKEN"):
        headers["dapr-api-token"] = token
    request = urllib.request.Request(url, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Answer(response.status, list(response.headers.items()), response.read())
    except urllib.error.HTTPError as exc:
        return Answer(exc.code, list(exc.headers.items()), exc.read())
    except OSError as exc:
        raise SidecarNotFound(f"{url}: {exc}") from exc


def _failed(console: Console, answer: Answer) -> int:
    try:
        error = answer.json()
    except ValueError:
        error = None
    if isinstance(error, dict) and "errorCode" in error:
        text = f"{error['errorCode']}: {error.get('message', '')}"
    else:
        text = answer.body.decode(errors="replace")
    console.print(f"{answer.status} {text}", style="red")
    return 1


def run_list(args: argparse.Namespace, console: Console) -> int:
    """Print the app's invocations as a table."""
    query = f"?status={args.status}" if args.status else ""
    answer = ask(sidecar_url(args) + PATH + query)
    if answer.status != 200:
        return _failed(console, answer)
    rows = answer.json()
    assert isinstance(rows, dict)
    invocations = rows.get("invocations", [])
    if not invocations:
        console.print("no invocations")
        return 0
    table = Table("ID", "CALLEE", "METHOD", "STATUS", "ATTEMPTS", "CREATED", "FINISHED")
    for row in invocations:
        table.add_row(
            row["id"],
            row["callee"],
            f"{row.get('verb', '')} {row['method']}".strip(),
            row["status"],
            str(row.get("attempts", "")),
            row["created"],
            row.get("finished") or "-",
        )
    console.print(table)
    return 0


def run_get(args: argparse.Namespace, console: Console) -> int:
    """Print one invocation: pending, cancelled, or its recorded response."""
    answer = ask(f"{sidecar_url(args)}{PATH}/{args.id}")
    status = dict((k.lower(), v) for k, v in answer.headers).get("dapr-invocation-status")
    if answer.status == 202:
        body = answer.json()
        attempts = body.get("attempts", 0) if isinstance(body, dict) else 0
        console.print(f"{args.id}: pending ({attempts} failed attempts so far)")
        return 0
    if status is None:
        return _failed(console, answer)
    console.print(f"{args.id}: {status}")
    if status == "cancelled":
        return 0
    console.print(f"HTTP {answer.status}")
    for name, value in answer.headers:
        if name.lower() not in ("date", "server", "dapr-invocation-status"):
            console.print(f"{name}: {value}")
    console.print()
    console.print(answer.body.decode(errors="replace"), soft_wrap=True)
    return 0


def run_cancel(args: argparse.Namespace, console: Console) -> int:
    """Cancel one pending invocation."""
    answer = ask(f"{sidecar_url(args)}{PATH}/{args.id}", method="DELETE")
    if answer.status != 200:
        return _failed(console, answer)
    console.print(f"{args.id}: cancelled")
    return 0
