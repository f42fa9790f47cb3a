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
from typing import TypeAlias

from rich.console import Console
from rich.table import Table

from runtime.cli.sidecar_api import Answer, send, sidecar_url

Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

PATH = "/v1.0-alpha1/invocations"


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


def _failed(console: Console, answer: Answer) -> int:
    console.print(f"{answer.status} {answer.error()}", style="red")
    return 1


def run_list(args: argparse.Namespace, console: Console) -> int:
    """Print the app's invocations as a table."""
    query = f"?status={args.status}" if args.status else ""
    answer = send("GET", sidecar_url(args, args.app_id) + PATH + query)
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
    answer = send("GET", f"{sidecar_url(args, args.app_id)}{PATH}/{args.id}")
    status = answer.header("dapr-invocation-status")
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
    answer = send("DELETE", f"{sidecar_url(args, args.app_id)}{PATH}/{args.id}")
    if answer.status != 200:
        return _failed(console, answer)
    console.print(f"{args.id}: cancelled")
    return 0
