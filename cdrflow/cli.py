"""The `cdrflow` command: the parser and the dispatch. Each subcommand lives with its
group in `cdrflow.commands`."""

from __future__ import annotations

import argparse
import sys

from cdrflow import logs
from cdrflow.commands import (
    admin,
    console,
    dead,
    processes,
    reconcile,
    records,
    replay,
    reprocessing,
    retention,
    send,
    simulate,
    status,
)
from cdrflow.commands.support import EXIT_CONFIG, Command
from cdrflow.health import version
from cdrflow.settings import Settings, SettingsError
from schemas.record import SCHEMA_VERSION
from schemas.source_settings import SourcesError

log = logs.get_logger("cdrflow")

# In the order `cdrflow --help` lists them.
COMMAND_GROUPS = (
    processes,
    admin,
    retention,
    status,
    replay,
    dead,
    reconcile,
    records,
    reprocessing,
    simulate,
    send,
    console,
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cdrflow", description="Telephony call-status callbacks into PostgreSQL and RabbitMQ."
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"cdrflow {version()} (records schema_version {SCHEMA_VERSION})",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"cdrflow: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    logs.configure(settings.log_level, settings.log_format)
    for problem in Settings.unknown_variables():
        log.warning("setting_unknown", problem=problem)
    run: Command = args.run
    try:
        return run(settings, args)
    except (SourcesError, SettingsError) as exc:
        print(f"cdrflow: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
