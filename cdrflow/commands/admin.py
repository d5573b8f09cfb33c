"""`cdrflow migrate` and `cdrflow check`: the database schema, and whether the settings,
the sources file, RabbitMQ and PostgreSQL are fit to run. `cdrflow drain-spool`: the spool
an ingress left behind."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from cdrflow.commands.support import EXIT_UNAVAILABLE, Subcommands, sources_of
from cdrflow.settings import Settings


def add_commands(commands: Subcommands) -> None:
    migrate = commands.add_parser("migrate", help="create or upgrade the database schema")
    migrate.set_defaults(run=run_migrate)
    check = commands.add_parser(
        "check",
        help="check the settings and the sources file, and that RabbitMQ and PostgreSQL answer",
    )
    check.set_defaults(run=run_check)
    drain = commands.add_parser(
        "drain-spool",
        help="send a spool no ingress runs on to cdr.raw (exit 1 if callbacks are left)",
    )
    drain.add_argument(
        "--dir", help="the spool directory (default: CDRFLOW_SPOOL_DIR)", default=None
    )
    drain.add_argument(
        "--timeout", type=float, default=600.0, help="seconds to wait for the broker's confirms"
    )
    drain.set_defaults(run=run_drain_spool)


def run_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from workers.storage.migrate import LATEST, migrate, partitioning_pending
    from workers.storage.records_partitioning import PREVIOUS_WORKERS

    applied = asyncio.run(migrate(settings.database_url))
    print(f"schema at version {LATEST}" + (f" (applied {applied})" if applied else " (up to date)"))
    if asyncio.run(partitioning_pending(settings.database_url)):
        # Not an error: this release's workers run on it; the next run completes it.
        print(
            "schema 12's partitioning of call_records, record_revisions and originals is"
            f" pending: workers of the previous release (application_name {PREVIOUS_WORKERS!r})"
            " are connected. Run `cdrflow migrate` again once they have stopped"
            " (docs/operations.md, Upgrades)"
        )
    return 0


def run_check(settings: Settings, args: argparse.Namespace) -> int:
    from cdrflow.commands.reconcile import reconciliation_state
    from cdrflow.operations.service_check import check_services

    sources = sources_of(settings, books=True)
    for name, source in sources.items():
        print(
            f"{name}: {source.provider} tenant={source.tenant}"
            f" timezone={source.timezone_name} signing={source.signing}"
            f"; {reconciliation_state(source)}"
        )
    answers = asyncio.run(check_services(settings))
    for answer in answers:
        print(answer)
    return 0 if all(answer.ok for answer in answers) else EXIT_UNAVAILABLE


def run_drain_spool(settings: Settings, args: argparse.Namespace) -> int:
    from ingress.spool_drain import drain_spool

    directory = Path(args.dir or settings.spool_dir)
    left = asyncio.run(drain_spool(settings, directory, args.timeout))
    print(f"{directory}: " + (f"{left} callbacks left" if left else "drained"))
    return EXIT_UNAVAILABLE if left else 0
