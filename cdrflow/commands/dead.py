"""`cdrflow dead list` and `cdrflow dead requeue`: the messages parked in `cdr.dead`."""

from __future__ import annotations

import argparse
import asyncio
from typing import TYPE_CHECKING

import orjson

from cdrflow.commands.support import Subcommands, count_limit
from cdrflow.settings import Settings

if TYPE_CHECKING:
    from cdrflow.operations.dead_letters import DeadLetter

LIST_LIMIT = 100
REQUEUE_LIMIT = 1000


def add_commands(commands: Subcommands) -> None:
    dead = commands.add_parser("dead", help="the messages parked in the dead-letter queue")
    actions = dead.add_subparsers(dest="action", required=True, metavar="ACTION")

    listing = actions.add_parser("list", help="show the parked messages: source, why, when")
    listing.add_argument(
        "--limit",
        type=count_limit,
        default=LIST_LIMIT,
        help=f"at most this many ({LIST_LIMIT}; 0: all)",
    )
    listing.add_argument("--json", action="store_true", help="JSON lines, one per message")
    listing.set_defaults(run=run_list)

    requeue = actions.add_parser("requeue", help="move parked messages back to the raw queue")
    requeue.add_argument(
        "--limit",
        type=count_limit,
        default=REQUEUE_LIMIT,
        help=f"at most this many messages, oldest first ({REQUEUE_LIMIT}; 0: all)",
    )
    requeue.add_argument(
        "--dry-run", action="store_true", help="list what would be moved, move nothing"
    )
    requeue.set_defaults(run=run_requeue)


def line(letter: DeadLetter) -> str:
    parked = letter.parked_at.isoformat(timespec="seconds") if letter.parked_at else "-"
    sources = ",".join(letter.sources) or "-"
    what = f"{letter.envelopes} callback(s)" if letter.readable else f"unreadable: {letter.problem}"
    return (
        f"{parked}\t{letter.reason or '-'} x{letter.times_parked}\t{sources}\t{what}"
        f"\t{letter.message_id}\t{letter.first_bytes}"
    )


def run_list(settings: Settings, args: argparse.Namespace) -> int:
    from cdrflow.operations.dead_letters import list_dead

    listing = asyncio.run(list_dead(settings, args.limit))
    for letter in listing.letters:
        print(orjson.dumps(letter.as_dict()).decode() if args.json else line(letter))
    if not args.json:
        shown, depth = len(listing.letters), listing.depth
        print(f"{depth} message(s) in {settings.dead_queue}" + _shown(shown, depth))
    return 0


def _shown(shown: int, depth: int) -> str:
    return f", the first {shown} shown" if shown < depth else ""


def run_requeue(settings: Settings, args: argparse.Namespace) -> int:
    from cdrflow.operations.dead_letters import requeue_dead

    report = asyncio.run(requeue_dead(settings, args.limit, dry_run=args.dry_run))
    for letter in report.moved:
        print(line(letter))
    verb = "would be moved" if args.dry_run else "moved"
    print(
        f"{len(report.moved)} message(s) ({report.callbacks} callback(s)) {verb} back"
        f" to {settings.raw_queue}"
    )
    for letter in report.left:
        print(f"left in {settings.dead_queue}: {line(letter)}")
    if report.error:
        print(f"stopped: {report.error}; what was not moved stays in {settings.dead_queue}")
        return 1
    return 0
