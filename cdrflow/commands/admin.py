"""`cdrflow migrate` and `cdrflow check`: the database schema, and whether the settings,
the sources file, RabbitMQ and PostgreSQL are fit to run."""

from __future__ import annotations

import argparse
import asyncio

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


def run_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from workers.migrate import LATEST, migrate

    applied = asyncio.run(migrate(settings.database_url))
    print(f"schema at version {LATEST}" + (f" (applied {applied})" if applied else " (up to date)"))
    return 0


def run_check(settings: Settings, args: argparse.Namespace) -> int:
    from cdrflow.commands.reconcile import reconciliation_state
    from cdrflow.services import check_services

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
