"""`cdrflow ingress` and `cdrflow worker`: the two long-running processes."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable

from cdrflow.commands.support import Subcommands, run_until_signalled, sources_of
from cdrflow.gc_tuning import tune_gc
from cdrflow.settings import Settings
from schemas.providers import default_registry


def add_commands(commands: Subcommands) -> None:
    ingress = commands.add_parser("ingress", help="run the HTTP ingress")
    ingress.add_argument("--host", default="0.0.0.0", help="address to listen on (0.0.0.0)")  # noqa: S104
    ingress.add_argument("--port", type=int, default=8080, help="port to listen on (8080)")
    ingress.set_defaults(run=run_ingress)

    commands.add_parser("worker", help="run one worker process").set_defaults(run=run_worker)


def run_ingress(settings: Settings, args: argparse.Namespace) -> int:
    from ingress.ingress_server import serve

    serve(settings, sources_of(settings), args.host, args.port)
    return 0


def run_worker(settings: Settings, args: argparse.Namespace) -> int:
    from workers.worker import Worker

    sources = sources_of(settings, secrets=False)
    tune_gc()

    async def start(stopping: asyncio.Event) -> int:
        worker = Worker(settings, sources, default_registry())
        watcher = asyncio.create_task(_stop_on(stopping, worker.stop))
        try:
            await worker.run()
        finally:
            watcher.cancel()
        return 0

    return run_until_signalled(start)


async def _stop_on(event: asyncio.Event, stop: Callable[[], None]) -> None:
    await event.wait()
    stop()
