"""`cdrflow tail`, `history` and `republish`: reading the stored and published records."""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid

from cdrflow.commands.support import EXIT_CONFIG, Subcommands, run_until_signalled, when
from cdrflow.settings import Settings


def add_commands(commands: Subcommands) -> None:
    tail = commands.add_parser(
        "tail", help="print records as they arrive, or from a point of the records stream"
    )
    tail.add_argument("binding", nargs="?", default="#", help="topic pattern (default: #)")
    start = tail.add_mutually_exclusive_group()
    start.add_argument("--since", type=when, help="stream: records published at or after")
    start.add_argument(
        "--from", dest="origin", choices=("first", "last", "next"), help="stream: from this end"
    )
    start.add_argument("--offset", type=_offset, help="stream: from this offset")
    tail.add_argument("--count", type=int, help="exit after this many records")
    tail.add_argument(
        "--show-offset",
        action="store_true",
        help='print {"offset": N, "record": ...}: N is the stream offset, for --offset N',
    )
    tail.set_defaults(run=run_tail)

    history = commands.add_parser(
        "history", help="print every revision, delivery and discrepancy of a record"
    )
    history.add_argument("source", nargs="?", help="the record's source")
    history.add_argument("external_id", nargs="?", help="the provider's id of the call")
    history.add_argument("--record-id", type=uuid.UUID, help="the record, by record_id")
    history.add_argument("--json", action="store_true", help="JSON lines, one per entry")
    history.set_defaults(run=run_history)

    republish = commands.add_parser("republish", help="send stored records again to one queue")
    republish.add_argument(
        "--since", type=when, required=True, help="current revision stored at or after"
    )
    republish.add_argument("--until", type=when, help="current revision stored before")
    republish.add_argument("--source", help="only this source")
    republish.add_argument("--tenant", help="only this tenant")
    target = republish.add_mutually_exclusive_group(required=True)
    target.add_argument("--to-queue", help="this queue (through the default exchange)")
    target.add_argument("--routing-key", help="this key on the records exchange (one queue's)")
    republish.set_defaults(run=run_republish)


def _offset(text: str) -> int:
    offset = int(text)
    if offset < 0:
        raise ValueError(text)
    return offset


def run_tail(settings: Settings, args: argparse.Namespace) -> int:
    from cdrflow.operations.tail import StreamStart, TailError, tail

    origins = [o for o in (args.since, args.origin, args.offset) if o is not None]
    stream_start = StreamStart(origins[0]) if origins else None

    async def start(stopping: asyncio.Event) -> int:
        await tail(
            settings,
            args.binding,
            sys.stdout,
            stopping,
            count=args.count,
            start=stream_start,
            show_offset=args.show_offset,
        )
        return 0

    try:
        return run_until_signalled(start)
    except TailError as exc:
        print(f"cdrflow tail: {exc}", file=sys.stderr)
        return 1


def run_history(settings: Settings, args: argparse.Namespace) -> int:
    from cdrflow.operations.history import print_history

    by_key = args.source is not None and args.external_id is not None
    if by_key == (args.record_id is not None):
        print("cdrflow history: give SOURCE EXTERNAL_ID, or --record-id", file=sys.stderr)
        return EXIT_CONFIG
    key = (args.source, args.external_id) if by_key else args.record_id
    return asyncio.run(print_history(settings.database_url, key, as_json=args.json))


def run_republish(settings: Settings, args: argparse.Namespace) -> int:
    from cdrflow.operations.republish import (
        RepublishError,
        RepublishSelection,
        Target,
        republish_with_progress,
    )

    selection = RepublishSelection(args.since, args.until, args.source, args.tenant)
    try:
        target = Target(args.to_queue, args.routing_key)
        sent = asyncio.run(republish_with_progress(settings, selection, target))
    except RepublishError as exc:
        print(f"cdrflow republish: {exc}", file=sys.stderr)
        return 1
    print(f"{sent} record(s) republished to {target}")
    return 0
