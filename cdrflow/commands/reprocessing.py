"""`cdrflow reprocess`: derive a source's stored records again from their original bytes
(docs/operations.md, "Reprocessing")."""

from __future__ import annotations

import argparse
import asyncio
import sys

from cdrflow.commands.support import Subcommands, sources_of, when
from cdrflow.settings import Settings, SettingsError
from schemas.providers import default_registry


def add_commands(commands: Subcommands) -> None:
    reprocess = commands.add_parser(
        "reprocess",
        help="derive a source's stored records again from their original request bytes,"
        " with today's providers and sources file",
    )
    reprocess.add_argument("--source", required=True, help="the source to reprocess")
    reprocess.add_argument(
        "--since", type=when, help="records first received at or after (ISO 8601)"
    )
    reprocess.add_argument("--until", type=when, help="records first received before (ISO 8601)")
    reprocess.add_argument(
        "--dry-run", action="store_true", help="count the records that would change, write nothing"
    )
    reprocess.set_defaults(run=run_reprocess)


def run_reprocess(settings: Settings, args: argparse.Namespace) -> int:
    from cdrflow.operations.reprocess import (
        ReprocessError,
        ReprocessSelection,
        reprocess,
        summary,
    )
    from cdrflow.progress import Progress

    if args.since and args.until and args.since >= args.until:
        raise SettingsError(f"reprocess: --since ({args.since}) must be before --until")
    selection = ReprocessSelection(args.source, args.since, args.until, args.dry_run)
    sources = sources_of(settings, secrets=False)
    progress = Progress(None, unit="record", event="reprocess_progress")
    try:
        counts = asyncio.run(
            reprocess(settings.database_url, sources, default_registry(), selection, progress)
        )
    except ReprocessError as exc:
        print(f"cdrflow reprocess: {exc}", file=sys.stderr)
        return 1
    finally:
        progress.close()
    for line in summary(counts, selection):
        print(line)
    return 0
