"""What several subcommands share: exit codes, the sources file, time arguments, and
running until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any, TypeAlias

from cdrflow import logs
from cdrflow.settings import Settings, load_sources
from schemas.sources import Sources

# What `add_subparsers` returns; its class is private to argparse.
Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
Command: TypeAlias = Callable[[Settings, argparse.Namespace], int]

EXIT_CONFIG = 2
EXIT_UNAVAILABLE = 1  # `check`: the broker or the database did not answer


def sources_of(settings: Settings, *, secrets: bool = True, books: bool = False) -> Sources:
    """The sources file; its secrets never reach a log line. With `books`, the credentials
    of the providers' books too (only the processes that reconcile need them)."""
    sources = load_sources(settings, resolve_secrets=secrets, reconcile_secrets=books)
    logs.REDACTOR.add(sources.secrets())
    return sources


def when(text: str) -> datetime:
    """An ISO 8601 time argument; without an offset it is UTC."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time (e.g. 2026-01-31, 2026-01-31T08:00:00 in UTC,"
            " 2026-01-31T08:00:00+08:00)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def count_limit(text: str) -> int:
    """A `--limit` argument: a whole number, 0 or more (0: all)."""
    try:
        limit = int(text)
    except ValueError:
        limit = -1
    if limit < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a whole number, 0 or more (0: all)")
    return limit


def run_until_signalled(
    start: Callable[[asyncio.Event], Coroutine[Any, Any, int]],
) -> int:
    """Run a coroutine; SIGTERM and SIGINT set the event it watches to stop gracefully."""

    async def runner() -> int:
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopping.set)
        return await start(stopping)

    return asyncio.run(runner())
