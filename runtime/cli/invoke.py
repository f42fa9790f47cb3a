"""``omnibus invoke``: call a method of an app through a running sidecar, as ``dapr invoke`` does.

The request goes to ``/v1.0/invoke/{app-id}/method/{method}`` of a sidecar: ``--sidecar URL`` or
``--dapr-http-port PORT``, else the newest sidecar found through presence on the pubsubs of the
resources path.  The verb defaults to POST (as ``dapr invoke``); ``--data``/``--data-file`` is the
body (``Content-Type: application/json`` unless a ``--header`` sets one); ``DAPR_API_TOKEN`` is
sent if set.  It prints the status line and the body; the exit code is 0 for a 2xx answer, else 1.

``--async`` sends ``Prefer: respond-async``: the sidecar answers 202 with the invocation's
``Location`` at once, which is printed (see ``omnibus invocations``).  ``--wait`` then polls that
location until the invocation finished (or ``--timeout`` passed) and prints the recorded response.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TypeAlias

from rich.console import Console

from bus.errors import OmnibusError
from runtime.cli.sidecar_api import Answer, send, sidecar_url

Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

_POLL_FIRST, _POLL_MAX = 0.1, 1.0


class InvokeCommandFailed(OmnibusError):
    """The command could not reach a sidecar or was given bad arguments."""


def add_invoke(commands: Commands) -> None:
    """``omnibus invoke``."""
    from runtime.cli.commands import _resources_option

    parser = commands.add_parser(
        "invoke",
        help="invoke a method of an app through a sidecar",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        epilog="example: omnibus invoke --app-id nodeapp --method neworder "
        '--data \'{"data": {"orderId": 1}}\'',
    )
    parser.add_argument("--app-id", required=True, help="the app to invoke")
    parser.add_argument("--method", required=True, help="the method (path, may hold a query)")
    parser.add_argument("--verb", default="POST", help="the HTTP verb (default POST)")
    data = parser.add_mutually_exclusive_group()
    data.add_argument("--data", help="the request body")
    data.add_argument("--data-file", type=Path, metavar="FILE", help="read the body from FILE")
    parser.add_argument(
        "--header", action="append", default=[], metavar="K=V", help="a request header (repeatable)"
    )
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--sidecar", metavar="URL", help="a sidecar's base URL")
    target.add_argument("--dapr-http-port", type=int, metavar="PORT", help="a local sidecar's port")
    parser.add_argument("--async", dest="async_", action="store_true", help="invoke asynchronously")
    parser.add_argument(
        "--wait", action="store_true", help="with --async: wait for the result and print it"
    )
    parser.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS", help="default 60")
    _resources_option(parser)
    parser.set_defaults(handler=run_invoke)


def run_invoke(args: argparse.Namespace, console: Console) -> int:
    """Send the invocation and print its answer; 0 for a 2xx answer."""
    if args.wait and not args.async_:
        raise InvokeCommandFailed("--wait needs --async")
    base = sidecar_url(args)
    headers = _headers(args.header)
    body = args.data_file.read_bytes() if args.data_file else (args.data or "").encode()
    if body and not any(k.lower() == "content-type" for k, _ in headers):
        headers.append(("Content-Type", "application/json"))
    if args.async_:
        headers.append(("Prefer", "respond-async"))
    url = f"{base}/v1.0/invoke/{args.app_id}/method/{args.method.lstrip('/')}"
    answer = send(args.verb.upper(), url, headers=headers, body=body, timeout=args.timeout)
    if args.async_ and answer.status == 202 and (location := answer.header("location")):
        console.print(f"accepted: {location}")
        if not args.wait:
            return 0
        answer = _wait(base + location, args.timeout)
    return _print(console, answer)


def _wait(url: str, timeout: float) -> Answer:
    """Poll an async invocation until it is no longer pending (202)."""
    deadline = time.monotonic() + timeout
    pause = _POLL_FIRST
    while True:
        answer = send("GET", url, timeout=timeout)
        if answer.status != 202:
            return answer
        if time.monotonic() + pause > deadline:
            raise InvokeCommandFailed(f"still pending after {timeout:g}s: {url}")
        time.sleep(pause)
        pause = min(pause * 2, _POLL_MAX)


def _print(console: Console, answer: Answer) -> int:
    ok = 200 <= answer.status < 300
    console.print(f"HTTP {answer.status}", style=None if ok else "red")
    if answer.body:
        console.print(answer.body.decode(errors="replace"), soft_wrap=True, markup=False)
    return 0 if ok else 1


def _headers(pairs: list[str]) -> list[tuple[str, str]]:
    headers = []
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise InvokeCommandFailed(f"--header {pair!r}: expected NAME=VALUE")
        headers.append((name.strip(), value))
    return headers
