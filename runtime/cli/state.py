"""``omnibus state get|set|delete|list``: a running sidecar's state API, for a person at a terminal.

Every command goes through a sidecar's HTTP API, so keys get that sidecar's app-id prefix and
the store's scopes apply as for the app itself: ``--sidecar URL``, ``--dapr-http-port N``, else a
sidecar found through presence on the pubsub components of the resources path (the sidecar of
``--app-id`` if given, else the newest one).  ``list`` runs the query API with an empty filter
(stores with QUERY_API), one page of ``--limit`` keys.  ``DAPR_API_TOKEN`` is sent if set.
"""

from __future__ import annotations

import argparse
import json
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

from rich.console import Console
from rich.table import Table

from bus.errors import OmnibusError
from runtime.cli.sidecar_api import Answer, send, sidecar_url

Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


class StateCommandFailed(OmnibusError):
    """The sidecar refused the request or could not be reached; the message says why."""


def add_state(commands: Commands) -> None:
    """``omnibus state`` and its sub-commands."""
    state = commands.add_parser(
        "state",
        help="get, set, delete or list state through a running sidecar",
        description=__doc__.split("\n\n", 1)[1].replace("``", "'") if __doc__ else None,
        epilog="example: omnibus state set --store statestore order-1 '{\"total\": 10}'",
    )
    actions = state.add_subparsers(dest="state_action", required=True, metavar="ACTION")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", default="statestore", help="the state store (statestore)")
    common.add_argument("--app-id", help="use the sidecar of this app (its keys)")
    target = common.add_mutually_exclusive_group()
    target.add_argument("--sidecar", metavar="URL", help="a sidecar's base URL")
    target.add_argument("--dapr-http-port", type=int, metavar="PORT", help="a local sidecar's port")
    common.add_argument(
        "--resources-path",
        action="append",
        type=Path,
        default=[],
        metavar="DIR",
        help="where to find the pubsub components sidecars announce themselves on",
    )
    get = actions.add_parser("get", parents=[common], help="print the value of a key")
    get.add_argument("key")
    put = actions.add_parser("set", parents=[common], help="save a JSON value under a key")
    put.add_argument("key")
    put.add_argument("value", help="a JSON value (quote strings: '\"text\"')")
    put.add_argument("--etag", help="save only if the key still has this etag")
    put.add_argument("--ttl", type=int, metavar="SECONDS", help="expire after SECONDS (-1: never)")
    put.add_argument("--first-write", action="store_true", help="fail if the key exists")
    delete = actions.add_parser("delete", parents=[common], help="delete a key")
    delete.add_argument("key")
    delete.add_argument("--etag", help="delete only if the key still has this etag")
    listing = actions.add_parser("list", parents=[common], help="list keys (query API)")
    listing.add_argument("--limit", type=int, default=100, metavar="N", help="at most N keys")
    state.set_defaults(handler=run_state)


def run_state(args: argparse.Namespace, console: Console) -> int:
    """Run one state sub-command; the exit code (1 when a key is absent)."""
    sidecar = Http(sidecar_url(args, args.app_id))
    store = urllib.parse.quote(args.store, safe="")
    if args.state_action == "get":
        return _get(sidecar, store, args.key, console)
    if args.state_action == "set":
        return _set(sidecar, store, args, console)
    if args.state_action == "delete":
        headers = {"If-Match": args.etag} if args.etag else {}
        sidecar.call("DELETE", f"/v1.0/state/{store}/{_quote(args.key)}", headers=headers)
        console.print(f"deleted {args.key!r} from {args.store} at {sidecar.base}")
        return 0
    return _list(sidecar, store, args.limit, console)


def _get(sidecar: Http, store: str, key: str, console: Console) -> int:
    reply = sidecar.call("GET", f"/v1.0/state/{store}/{_quote(key)}")
    if reply.status == 204:
        Console(stderr=True, highlight=False, markup=False).print(f"{key!r}: no value")
        return 1
    console.print(reply.body.decode("utf-8", "replace"), soft_wrap=True)
    etag, expires = reply.header("etag"), reply.header("metadata.ttlexpiretime")
    extra = [f"etag: {etag}"] if etag else []
    if expires:
        extra.append(f"expires: {expires}")
    if extra:
        Console(stderr=True, highlight=False, markup=False).print(", ".join(extra))
    return 0


def _set(sidecar: Http, store: str, args: argparse.Namespace, console: Console) -> int:
    try:
        value = json.loads(args.value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"the value is not JSON ({exc}); quote a string: '\"{args.value}\"'"
        ) from None
    item: dict[str, Any] = {"key": args.key, "value": value}
    if args.etag:
        item["etag"] = args.etag
    if args.ttl is not None:
        item["metadata"] = {"ttlInSeconds": str(args.ttl)}
    if args.first_write:
        item["options"] = {"concurrency": "first-write"}
    sidecar.call("POST", f"/v1.0/state/{store}", body=json.dumps([item]).encode())
    console.print(f"saved {args.key!r} in {args.store} at {sidecar.base}")
    return 0


def _list(sidecar: Http, store: str, limit: int, console: Console) -> int:
    query = json.dumps({"page": {"limit": max(limit, 1)}}).encode()
    reply = sidecar.call("POST", f"/v1.0-alpha1/state/{store}/query", body=query)
    if reply.status == 204:
        console.print("no keys")
        return 0
    answer = json.loads(reply.body)
    table = Table("KEY", "ETAG", "VALUE")
    for entry in answer.get("results", []):
        text = json.dumps(entry.get("data"))
        table.add_row(entry.get("key", ""), entry.get("etag", ""), _shorten(text, 60))
    console.print(table)
    if answer.get("token"):
        console.print(f"more keys exist: raise --limit (now {limit})")
    return 0


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _quote(key: str) -> str:
    return urllib.parse.quote(key, safe="")


@dataclass(frozen=True, slots=True)
class Http:
    """A sidecar's HTTP API; any answer that is not 2xx raises :class:`StateCommandFailed`."""

    base: str
    timeout: float = 30.0

    def call(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        """Send one request and return the answer."""
        sent = {"Content-Type": "application/json", **(headers or {})}
        answer = send(
            method, self.base + path, headers=list(sent.items()), body=body, timeout=self.timeout
        )
        if not answer.ok:
            raise StateCommandFailed(f"{method} {path}: {answer.status} {answer.error()}")
        return answer
