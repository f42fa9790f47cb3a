"""``omnibus init``, ``list``, ``publish``, ``dlq`` and ``bench``: parsers and handlers.

Each handler takes the parsed arguments and a rich console and returns the exit code; the bus
and component modules are imported only when a handler runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from pathlib import Path
from typing import Any, TypeAlias

from rich.console import Console
from rich.table import Table

Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _resources_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--resources-path",
        action="append",
        type=Path,
        default=[],
        metavar="DIR",
        help="a directory of component files (repeatable); default $OMNIBUS_HOME/components",
    )


def add_init(commands: Commands) -> None:
    """``omnibus init``."""
    init = commands.add_parser(
        "init",
        help="write the default components",
        description=(
            "Write the embedded default components to $OMNIBUS_HOME/components "
            "(~/.omnibus/components): a pubsub named 'pubsub' on the SQLite file "
            "$OMNIBUS_HOME/bus.db and a state store named 'statestore' on "
            "$OMNIBUS_HOME/state.db. Existing files are never overwritten; running it again "
            "changes nothing."
        ),
    )
    init.set_defaults(handler=run_init)


def run_init(args: argparse.Namespace, console: Console) -> int:
    """Write the default components once and say where they are."""
    from components.registry import default_home, ensure_default_components

    home = default_home(os.environ)
    existed = (home / "components").is_dir() and any((home / "components").iterdir())
    directory = ensure_default_components(home)
    verb = "already had" if existed else "wrote"
    console.print(f"{verb} the default components in {directory}:")
    for path in sorted(directory.iterdir()):
        console.print(f"  {path.name}")
    console.print(f"the embedded bus lives in {home / 'bus.db'} (created on first use)")
    return 0


def add_list(commands: Commands) -> None:
    """``omnibus list``."""
    listing = commands.add_parser(
        "list",
        help="list the running sidecars",
        description=(
            "List the sidecars that are up, from the presence entries they keep on the pubsub "
            "components of the resources path (entries older than a few seconds without a "
            "heartbeat are not shown). In-memory pubsubs are private to their process and "
            "are skipped."
        ),
    )
    _resources_option(listing)
    listing.set_defaults(handler=run_list)


def run_list(args: argparse.Namespace, console: Console) -> int:
    """Print a table of live sidecars, or a line saying there are none."""
    from runtime.cli.resources import open_pubsubs
    from runtime.cli.sidecars import live_sidecars, sidecar_table

    async def collect() -> tuple[list[str], Any]:
        async with open_pubsubs(args.resources_path, environ=os.environ) as brokers:
            return list(brokers), await live_sidecars(brokers)

    names, sidecars = asyncio.run(collect())
    if not sidecars:
        where = ", ".join(names) or "none found"
        console.print(f"no sidecars running (pubsub components looked at: {where})")
        return 0
    console.print(sidecar_table(sidecars))
    return 0


def add_publish(commands: Commands) -> None:
    """``omnibus publish``."""
    publish = commands.add_parser(
        "publish",
        help="publish an event to a topic",
        description=(
            "Publish one event. It goes through a running sidecar's HTTP API when there is one "
            "(--sidecar, --dapr-http-port, else the sidecar of --app-id or any sidecar on the "
            "pubsub, found through presence), so the sidecar builds the CloudEvent. With no "
            "sidecar running it is published on the bus directly, with the same envelope and "
            "--app-id (default 'omnibus') as its source. DAPR_API_TOKEN is sent if set."
        ),
        epilog="example: omnibus publish --pubsub pubsub --topic orders --data '{\"orderId\": 1}'",
    )
    publish.add_argument("--pubsub", required=True, help="the pubsub component's name")
    publish.add_argument("--topic", required=True, help="the topic")
    data = publish.add_mutually_exclusive_group(required=True)
    data.add_argument("--data", help="the payload (JSON unless --content-type says otherwise)")
    data.add_argument("--data-file", type=Path, metavar="FILE", help="read the payload from FILE")
    publish.add_argument(
        "--content-type", default="application/json", help="default application/json"
    )
    publish.add_argument(
        "--metadata",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="publish metadata, e.g. ttlInSeconds=60 or rawPayload=true (repeatable)",
    )
    target = publish.add_mutually_exclusive_group()
    target.add_argument("--sidecar", metavar="URL", help="a sidecar's base URL")
    target.add_argument("--dapr-http-port", type=int, metavar="PORT", help="a local sidecar's port")
    publish.add_argument("--app-id", help="publish through (or, directly, as) this app")
    _resources_option(publish)
    publish.set_defaults(handler=run_publish)


def _payload(args: argparse.Namespace) -> bytes:
    from runtime.pubsub.cloudevents import is_json_type

    data: bytes = args.data_file.read_bytes() if args.data_file else args.data.encode()
    if is_json_type(args.content_type):
        try:
            json.loads(data)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"the data is not valid JSON: {exc}") from None
    return data


def _metadata(pairs: list[str]) -> dict[str, str]:
    metadata = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"--metadata {pair!r}: expected KEY=VALUE")
        metadata[key] = value
    return metadata


def run_publish(args: argparse.Namespace, console: Console) -> int:
    """Publish through a sidecar if one is reachable, else directly on the bus."""
    from runtime.cli.resources import CLI_APP_ID, open_pubsubs
    from runtime.cli.sidecars import (
        choose_sidecar,
        live_sidecars,
        publish_on_bus,
        publish_via_sidecar,
    )

    data, metadata = _payload(args), _metadata(args.metadata)
    options = {"content_type": args.content_type, "metadata": metadata}
    where = f"{args.pubsub}/{args.topic}"
    url = args.sidecar or (args.dapr_http_port and f"http://127.0.0.1:{args.dapr_http_port}")
    if url:
        publish_via_sidecar(url, args.pubsub, args.topic, data, **options)
        console.print(f"published to {where} through the sidecar at {url}")
        return 0

    async def publish() -> str:
        async with open_pubsubs(
            args.resources_path, environ=os.environ, only=args.pubsub
        ) as brokers:
            broker = brokers[args.pubsub]
            sidecar = choose_sidecar(await live_sidecars(brokers), args.pubsub, args.app_id)
            if sidecar is not None:
                await asyncio.to_thread(
                    publish_via_sidecar,
                    sidecar.address,
                    args.pubsub,
                    args.topic,
                    data,
                    **options,
                )
                return f"through the sidecar of {sidecar.app_id!r} at {sidecar.address}"
            source = args.app_id or CLI_APP_ID
            event_id = await publish_on_bus(
                broker, args.pubsub, args.topic, data, source=source, **options
            )
            return f"directly on the bus (no sidecar running), event id {event_id}"

    console.print(f"published to {where} {asyncio.run(publish())}")
    return 0


def add_dlq(commands: Commands) -> None:
    """``omnibus dlq list|replay``."""
    dlq = commands.add_parser(
        "dlq",
        help="list or replay dead letters",
        description=(
            "Dead letters of a topic are the messages on its dead-letter topic "
            "(<topic>.deadletter unless --dead-letter-topic names the one a subscription set)."
        ),
    )
    actions = dlq.add_subparsers(dest="dlq_action", required=True, metavar="ACTION")
    listing = actions.add_parser(
        "list",
        help="show dead letters without consuming them",
        description=(
            "Show up to --limit messages still held on the dead-letter topic, oldest first. "
            "Nothing is consumed or acknowledged."
        ),
    )
    replay = actions.add_parser(
        "replay",
        help="republish dead letters to the topic",
        description=(
            "Consume the dead-letter topic as the consumer group 'omnibus-dlq', one message at "
            "a time: republish it to the topic (same bytes: the same CloudEvent and event id), and "
            "acknowledge it only after the publish succeeded; a crash in between replays it "
            "again (at-least-once). Stops after --limit messages, at the first failed publish, "
            "or when no message arrived for --wait seconds. A message is replayed once by this "
            "group; other groups subscribed to the dead-letter topic still get it, and the "
            "broker removes it once every group has acknowledged it."
        ),
    )
    for parser in (listing, replay):
        parser.add_argument("--pubsub", required=True, help="the pubsub component's name")
        parser.add_argument("--topic", required=True, help="the topic whose dead letters to use")
        parser.add_argument(
            "--dead-letter-topic", metavar="TOPIC", help="if not <topic>.deadletter"
        )
        parser.add_argument(
            "--limit", type=_positive, default=100, metavar="N", help="at most N (default 100)"
        )
        _resources_option(parser)
    replay.add_argument(
        "--wait",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="stop once no message arrived for this long (default 2)",
    )
    listing.set_defaults(handler=run_dlq_list)
    replay.set_defaults(handler=run_dlq_replay)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def run_dlq_list(args: argparse.Namespace, console: Console) -> int:
    """Print the dead letters of a topic."""
    from runtime.cli.dlq import dead_letter_topic, preview
    from runtime.cli.resources import open_pubsubs

    source = dead_letter_topic(args.topic, args.dead_letter_topic)

    async def browse() -> list[Any]:
        async with open_pubsubs(
            args.resources_path, environ=os.environ, only=args.pubsub
        ) as brokers:
            return await brokers[args.pubsub].browse(source, args.limit)

    messages = asyncio.run(browse())
    if not messages:
        console.print(f"no dead letters on {args.pubsub}/{source}")
        return 0
    table = Table("ID", "ATTEMPT", "SIZE", "PREVIEW", title=f"{args.pubsub}/{source}")
    for message in messages:
        table.add_row(message.id, str(message.attempt), f"{len(message.data)} B", preview(message))
    console.print(table)
    return 0


def run_dlq_replay(args: argparse.Namespace, console: Console) -> int:
    """Republish dead letters to their topic; exit 1 if a publish failed."""
    from runtime.cli.dlq import ReplayResult, dead_letter_topic, replay
    from runtime.cli.resources import open_pubsubs

    source = dead_letter_topic(args.topic, args.dead_letter_topic)

    async def run() -> ReplayResult:
        async with open_pubsubs(
            args.resources_path, environ=os.environ, only=args.pubsub
        ) as brokers:
            return await replay(
                brokers[args.pubsub], args.topic, source=source, limit=args.limit, idle=args.wait
            )

    result = asyncio.run(run())
    console.print(
        f"replayed {result.replayed} dead letter(s) from {args.pubsub}/{source} to {args.topic}"
    )
    if result.error:
        console.print(f"stopped: {result.error}", style="red")
        return 1
    return 0


def add_bench(commands: Commands) -> None:
    """``omnibus bench``: the options and the run are the benchmark harness's own."""
    from benchmarks.cli import add_arguments

    bench = commands.add_parser(
        "bench",
        help="measure throughput and latency",
        description=(
            "Run the benchmark harness (benchmarks/): omnibus on each backend against the raw "
            "clients and a peer framework; prints a table and writes JSON, plots and "
            "BENCHMARKS.md. Needs the services of the chosen backends."
        ),
    )
    add_arguments(bench)
    bench.set_defaults(handler=run_bench)


def run_bench(args: argparse.Namespace, console: Console) -> int:
    """Hand the parsed options to the harness."""
    from benchmarks.cli import main

    return main(args)
