"""`cdrflow status`: one screen of the pipeline's state; exit 1 when something needs a
human."""

from __future__ import annotations

import argparse
import asyncio

import orjson

from cdrflow.commands.support import EXIT_UNAVAILABLE, Subcommands, sources_of
from cdrflow.settings import Settings


def add_commands(commands: Subcommands) -> None:
    status = commands.add_parser(
        "status", help="the pipeline's state on one screen; exit 1 when something needs a human"
    )
    status.add_argument("--json", action="store_true", help="one JSON document")
    status.set_defaults(run=run_status)


def run_status(settings: Settings, args: argparse.Namespace) -> int:
    from cdrflow.operations.pipeline_status import gather_status, outbox_limit, render

    configured = list(sources_of(settings, secrets=False)) if settings.sources else []
    status = asyncio.run(gather_status(settings, configured))
    limit = outbox_limit(settings)
    if args.json:
        print(orjson.dumps(status.as_dict(limit), option=orjson.OPT_INDENT_2).decode())
    else:
        print(render(status, limit))
    return EXIT_UNAVAILABLE if status.problems(limit) else 0
