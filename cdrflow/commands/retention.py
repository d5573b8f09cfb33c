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
    from workers.storage.migrate import complete_partitioning
    from workers.storage.partition_retention import apply_retention
    from workers.storage.records_partitioning import is_pending

    async def run() -> int:
        connection = await asyncpg.connect(settings.database_url)
        try:
            # Schema 12's partitioning, left pending by `cdrflow migrate` while workers of
            # the previous release were connected, is done by the first run after they stop.
            if await is_pending(connection):
                if args.dry_run:
                    print(
                        "schema 12's partitioning of the records is pending: would do it now"
                        " unless workers of the previous release are connected"
                    )
                elif await complete_partitioning(connection):
                    print("schema 12's partitioning of the records: done now")
                else:
                    print(
                        "schema 12's partitioning of the records: pending (workers of the"
                        " previous release connected, or `cdrflow migrate` running)"
                    )
            report = await apply_retention(
                connection, settings, datetime.now(UTC), dry_run=args.dry_run
            )
        finally:
            await connection.close()
        for line in report:
            print(line)
        return EXIT_UNAVAILABLE if report.failed else 0

    return asyncio.run(run())
