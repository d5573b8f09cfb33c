"""`cdrflow retention`: create the time partitions ahead and drop those past retention
(`workers.storage.partition_retention`). Run it on a schedule, as the database's owner
role: the Kubernetes CronJob and the systemd timer in deploy/ run it every hour."""

from __future__ import annotations

import argparse
import asyncio
from datetime import UTC, datetime

import asyncpg

from cdrflow.commands.support import EXIT_UNAVAILABLE, Subcommands
from cdrflow.settings import Settings


def add_commands(commands: Subcommands) -> None:
    retention = commands.add_parser(
        "retention",
        help="create time partitions ahead, drop whole partitions past retention"
        " (run hourly as the owner role; exit 1 if a table was busy)",
    )
    retention.add_argument(
        "--dry-run",
        action="store_true",
        help="print what would be created and dropped, change nothing",
    )
    retention.set_defaults(run=run_retention)


def run_retention(settings: Settings, args: argparse.Namespace) -> int:
    from workers.storage.partition_retention import apply_retention

    async def run() -> int:
        connection = await asyncpg.connect(settings.database_url)
        try:
            report = await apply_retention(
                connection, settings, datetime.now(UTC), dry_run=args.dry_run
            )
        finally:
            await connection.close()
        for line in report:
            print(line)
        return EXIT_UNAVAILABLE if report.failed else 0

    return asyncio.run(run())
