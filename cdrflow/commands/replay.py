"""`cdrflow replay`: send rejected callbacks through the workers again."""

from __future__ import annotations

import argparse
import asyncio
from datetime import UTC
from typing import TYPE_CHECKING

from cdrflow.commands.support import Subcommands, count_limit, when
from cdrflow.settings import Settings, SettingsError
from schemas.providers.errors import Reason

if TYPE_CHECKING:
    from cdrflow.operations.replay_rejected import ReplaySelection

# cdrflow.operations.replay_rejected.DEFAULT_LIMIT, without importing asyncpg to parse
REPLAY_LIMIT = 1000


def add_commands(commands: Subcommands) -> None:
    replay = commands.add_parser("replay", help="send rejected callbacks through the workers again")
    replay.add_argument("--source", help="only this source")
    replay.add_argument(
        "--reason", type=_reason, help="only this reason code (e.g. unparseable_body)"
    )
    replay.add_argument("--since", type=when, help="received at or after (ISO 8601)")
    replay.add_argument("--until", type=when, help="received before (ISO 8601)")
    replay.add_argument(
        "--limit",
        type=count_limit,
        default=REPLAY_LIMIT,
        help=f"at most this many requests, oldest first ({REPLAY_LIMIT}; 0: all)",
    )
    replay.add_argument(
        "--dry-run", action="store_true", help="list what would be sent, send nothing"
    )
    replay.set_defaults(run=run_replay)


def _reason(text: str) -> str:
    known = [reason.value for reason in Reason]
    if text not in known:
        raise argparse.ArgumentTypeError(f"unknown reason {text!r}; known: {', '.join(known)}")
    return text


def run_replay(settings: Settings, args: argparse.Namespace) -> int:
    from cdrflow.operations.replay_rejected import ReplaySelection

    if args.since and args.until and args.since >= args.until:
        raise SettingsError(f"replay: --since ({args.since}) must be before --until ({args.until})")
    selection = ReplaySelection(
        args.source, args.reason, args.since, args.until, args.limit or None
    )
    if args.dry_run:
        return asyncio.run(_replay_dry_run(settings, selection))
    return asyncio.run(_replay_with_progress(settings, selection))


async def _replay_dry_run(settings: Settings, selection: ReplaySelection) -> int:
    import asyncpg

    from cdrflow.operations.replay_rejected import select_requests, summarize

    connection = await asyncpg.connect(settings.database_url)
    try:
        groups = await summarize(connection, selection)
        count = len(await select_requests(connection, selection))
    finally:
        await connection.close()
    for group in groups:
        oldest = group.oldest.astimezone(UTC).isoformat(timespec="seconds")
        print(f"{group.source}\t{group.reason}\t{group.requests}\toldest {oldest}")
    total = sum(group.requests for group in groups)
    if total > count:
        print(f"(--limit {selection.limit}: the oldest {count} of {total})")
    print(f"{count} request(s) would be sent again")
    return 0


async def _replay_with_progress(settings: Settings, selection: ReplaySelection) -> int:
    from cdrflow.operations.replay_rejected import replay
    from cdrflow.progress import Progress

    progress = Progress(None, unit="request", event="replay_progress")
    try:
        count = await replay(
            settings, selection, selected=progress.expect, progress=progress.update
        )
    finally:
        progress.close()
    print(f"{count} request(s) sent again")
    if selection.limit and count == selection.limit:
        print(f"the limit ({selection.limit}) was reached: more may be waiting")
    return 0
