"""`cdrflow reconcile` (one pass) and `cdrflow reconciler` (a pass every interval, until
SIGTERM): the sources compared with their providers' own books (docs/reconciliation.md)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from cdrflow.commands.support import (
    EXIT_UNAVAILABLE,
    Subcommands,
    run_until_signalled,
    sources_of,
    when,
)
from cdrflow.settings import Settings, SettingsError
from schemas.providers import default_registry
from schemas.sources import Source, Sources

if TYPE_CHECKING:
    from reconciler.passes import WindowOutcome

COLUMNS = ("source", "window", "status", "provider", "stored", "backfilled", "discrepancies")


def add_commands(commands: Subcommands) -> None:
    reconcile = commands.add_parser(
        "reconcile", help="one pass: compare sources with their providers' books, backfill"
    )
    reconcile.add_argument(
        "--source", action="append", help="only this source (repeat for several)"
    )
    reconcile.add_argument("--since", type=when, help="from this time (ISO 8601)")
    reconcile.add_argument("--until", type=when, help="up to this time (ISO 8601)")
    reconcile.add_argument(
        "--dry-run", action="store_true", help="list and compare, name what would be backfilled"
    )
    reconcile.set_defaults(run=run_reconcile)
    commands.add_parser(
        "reconciler", help="run a reconciliation pass every interval, until SIGTERM"
    ).set_defaults(run=run_reconciler)


def selected_sources(sources: Sources, names: Sequence[str] | None) -> list[Source]:
    """The sources a pass covers: those named, each of which must be reconciled, or every
    reconciled source. A source that cannot be is a configuration error, which says why."""
    if not names:
        return [source for source in sources.values() if source.reconcile is not None]
    chosen = []
    for name in names:
        source = sources.get(name)
        if source is None:
            raise SettingsError(f"reconcile: no source {name!r} in {sources.origin}")
        if source.reconcile is None:
            raise SettingsError(f"reconcile: source {name!r}: {reconciliation_state(source)}")
        chosen.append(source)
    return chosen


def reconciliation_state(source: Source) -> str:
    """One line on how a source is reconciled (`cdrflow check` prints it)."""
    if source.reconcile is not None:
        every = int(source.reconcile.interval.total_seconds() // 60)
        lookback = int(source.reconcile.lookback.total_seconds() // 3600)
        return f"reconciled every {every} min over {lookback} h"
    if default_registry()[source.provider].books is None:
        return f"no reconciliation ({source.provider} has no documented books)"
    return "not reconciled (no reconcile table)"


def run_reconcile(settings: Settings, args: argparse.Namespace) -> int:
    if args.since and args.until and args.since >= args.until:
        raise SettingsError(
            f"reconcile: --since ({args.since}) must be before --until ({args.until})"
        )
    chosen = selected_sources(sources_of(settings, books=True), args.source)
    if not chosen:
        print("no source has a reconcile table: nothing to reconcile")
        return 0

    async def start(stopping: asyncio.Event) -> int:
        import asyncpg

        try:
            return await _reconcile(settings, chosen, args, stopping)
        except (OSError, asyncpg.PostgresError) as exc:  # no database: nothing was listed
            print(f"cdrflow: reconcile: PostgreSQL: {exc}", file=sys.stderr)
            return EXIT_UNAVAILABLE

    return run_until_signalled(start)


async def _reconcile(
    settings: Settings, chosen: list[Source], args: argparse.Namespace, stopping: asyncio.Event
) -> int:
    from cdrflow.progress import Progress
    from reconciler.books_client import Stopped
    from reconciler.reconciler_metrics import ReconcileMetrics
    from reconciler.runner import Reconciliation
    from reconciler.tables import FAILED

    metrics = ReconcileMetrics(source.name for source in chosen)
    outcomes: list[WindowOutcome] = []
    complete = True
    progress = Progress(None, unit="record", event="reconcile_progress")
    try:
        async with Reconciliation(
            settings, default_registry(), stopping, metrics, dry_run=args.dry_run
        ) as reconciliation:
            for source in chosen:
                try:
                    found = await reconciliation.pass_over(
                        source, args.since, args.until, wait_for_lock=True, on_rows=progress.update
                    )
                except Stopped:
                    found = None
                complete = complete and found is not None
                outcomes += found or []
                if stopping.is_set():
                    complete = False
                    break
    finally:
        progress.close()
    print_outcomes(outcomes, dry_run=args.dry_run)
    failed = any(outcome.status == FAILED for outcome in outcomes)
    return EXIT_UNAVAILABLE if failed or not complete else 0


def print_outcomes(outcomes: Sequence[WindowOutcome], *, dry_run: bool) -> None:
    rows = [COLUMNS]
    for o in outcomes:
        c = o.counts
        rows.append(
            (
                o.source,
                o.window.label(),
                o.status,
                str(c.provider_records),
                str(c.stored),
                str(len(o.would_backfill)) if dry_run else str(c.backfilled),
                str(c.discrepancies),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    for o in outcomes:
        if o.error:
            print(f"{o.source} {o.window.label()}: {o.error}")
        for external_id in o.would_backfill:
            print(f"would backfill {o.source} {external_id}")
    if dry_run:
        print("dry run: nothing was sent, no discrepancy was kept")


def run_reconciler(settings: Settings, args: argparse.Namespace) -> int:
    from reconciler.service import Reconciler

    sources = sources_of(settings, books=True)

    async def start(stopping: asyncio.Event) -> int:
        await Reconciler(settings, sources, default_registry(), stopping).run()
        return 0

    return run_until_signalled(start)
