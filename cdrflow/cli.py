"""The `cdrflow` command."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import uuid
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from cdrflow import logs
from cdrflow.health import version
from cdrflow.settings import Settings, SettingsError, load_sources
from schemas.providers import default_registry
from schemas.providers.errors import Reason
from schemas.record import SCHEMA_VERSION
from schemas.sources import Sources, SourcesError

if TYPE_CHECKING:
    from workers.replay import ReplaySelection

EXIT_CONFIG = 2
EXIT_UNAVAILABLE = 1  # `check`: the broker or the database did not answer
REPLAY_LIMIT = 1000  # workers.replay.DEFAULT_LIMIT, without importing asyncpg to parse

log = logs.get_logger("cdrflow")


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

    ingress = commands.add_parser("ingress", help="run the HTTP ingress")
    ingress.add_argument("--host", default="0.0.0.0", help="address to listen on (0.0.0.0)")  # noqa: S104
    ingress.add_argument("--port", type=int, default=8080, help="port to listen on (8080)")

    commands.add_parser("worker", help="run one worker process")
    commands.add_parser("migrate", help="create or upgrade the database schema")
    commands.add_parser(
        "check",
        help="check the settings and the sources file, and that RabbitMQ and PostgreSQL answer",
    )

    replay = commands.add_parser("replay", help="send rejected callbacks through the workers again")
    replay.add_argument("--source", help="only this source")
    replay.add_argument(
        "--reason", type=_reason, help="only this reason code (e.g. unparseable_body)"
    )
    replay.add_argument("--since", type=_when, help="received at or after (ISO 8601)")
    replay.add_argument("--until", type=_when, help="received before (ISO 8601)")
    replay.add_argument(
        "--limit",
        type=_limit,
        default=REPLAY_LIMIT,
        help=f"at most this many requests, oldest first ({REPLAY_LIMIT}; 0: all)",
    )
    replay.add_argument(
        "--dry-run", action="store_true", help="list what would be sent, send nothing"
    )

    tail = commands.add_parser(
        "tail", help="print records as they arrive, or from a point of the records stream"
    )
    tail.add_argument("binding", nargs="?", default="#", help="topic pattern (default: #)")
    start = tail.add_mutually_exclusive_group()
    start.add_argument("--since", type=_when, help="stream: records published at or after")
    start.add_argument(
        "--from", dest="origin", choices=("first", "last", "next"), help="stream: from this end"
    )
    start.add_argument("--offset", type=_offset, help="stream: from this offset")
    tail.add_argument("--count", type=int, help="exit after this many records")

    history = commands.add_parser("history", help="print every revision and delivery of a record")
    history.add_argument("source", nargs="?", help="the record's source")
    history.add_argument("external_id", nargs="?", help="the provider's id of the call")
    history.add_argument("--record-id", type=uuid.UUID, help="the record, by record_id")
    history.add_argument("--json", action="store_true", help="JSON lines, one per entry")

    republish = commands.add_parser("republish", help="send stored records again to one queue")
    republish.add_argument(
        "--since", type=_when, required=True, help="current revision stored at or after"
    )
    republish.add_argument("--until", type=_when, help="current revision stored before")
    republish.add_argument("--source", help="only this source")
    republish.add_argument("--tenant", help="only this tenant")
    target = republish.add_mutually_exclusive_group(required=True)
    target.add_argument("--to-queue", help="this queue (through the default exchange)")
    target.add_argument("--routing-key", help="this key on the records exchange (one queue's)")

    simulate = commands.add_parser("simulate", help="push realistic callbacks at a chosen rate")
    simulate.add_argument("--url", default="http://127.0.0.1:8080", help="the ingress")
    simulate.add_argument("--rate", type=float, default=20.0, help="callbacks per second (20)")
    simulate.add_argument("--count", type=int, default=200, help="callbacks to push (200)")
    simulate.add_argument("--repush", type=float, default=0.2, help="share re-pushed 1-3 times")
    simulate.add_argument("--bad", type=float, default=0.05, help="share with a malformed body")
    simulate.add_argument("--seed", type=int, help="random seed, for repeatable runs")
    return parser


def _when(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time (e.g. 2026-01-31, 2026-01-31T08:00:00 in UTC,"
            " 2026-01-31T08:00:00+08:00)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _reason(text: str) -> str:
    known = [reason.value for reason in Reason]
    if text not in known:
        raise argparse.ArgumentTypeError(f"unknown reason {text!r}; known: {', '.join(known)}")
    return text


def _limit(text: str) -> int:
    try:
        limit = int(text)
    except ValueError:
        limit = -1
    if limit < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a whole number, 0 or more (0: all)")
    return limit


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
    try:
        return COMMANDS[args.command](settings, args)
    except (SourcesError, SettingsError) as exc:
        print(f"cdrflow: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130


def _sources(settings: Settings, *, secrets: bool = True) -> Sources:
    sources = load_sources(settings, resolve_secrets=secrets)
    logs.REDACTOR.add(sources.secrets())
    return sources


def _run_until_signalled(
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


def cmd_ingress(settings: Settings, args: argparse.Namespace) -> int:
    from ingress.server import serve

    serve(settings, _sources(settings), args.host, args.port)
    return 0


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from workers.worker import Worker

    sources = _sources(settings, secrets=False)

    async def start(stopping: asyncio.Event) -> int:
        worker = Worker(settings, sources, default_registry())
        watcher = asyncio.create_task(_stop_on(stopping, worker.stop))
        try:
            await worker.run()
        finally:
            watcher.cancel()
        return 0

    return _run_until_signalled(start)


async def _stop_on(event: asyncio.Event, stop: Callable[[], None]) -> None:
    await event.wait()
    stop()


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from workers.migrate import LATEST, migrate

    applied = asyncio.run(migrate(settings.database_url))
    print(f"schema at version {LATEST}" + (f" (applied {applied})" if applied else " (up to date)"))
    return 0


def cmd_check(settings: Settings, args: argparse.Namespace) -> int:
    from cdrflow.services import check_services

    sources = _sources(settings)
    for name, source in sources.items():
        print(
            f"{name}: {source.provider} tenant={source.tenant}"
            f" timezone={source.timezone_name} signing={source.signing}"
        )
    answers = asyncio.run(check_services(settings))
    for answer in answers:
        print(answer)
    return 0 if all(answer.ok for answer in answers) else EXIT_UNAVAILABLE


def cmd_replay(settings: Settings, args: argparse.Namespace) -> int:
    from workers.replay import ReplaySelection

    if args.since and args.until and args.since >= args.until:
        raise SettingsError(f"replay: --since ({args.since}) must be before --until ({args.until})")
    selection = ReplaySelection(
        args.source, args.reason, args.since, args.until, args.limit or None
    )
    if args.dry_run:
        return asyncio.run(_replay_dry_run(settings, selection))
    return asyncio.run(_replay_with_progress(settings, selection))


async def _replay_dry_run(settings: Settings, selection: ReplaySelection) -> int:
    import asyncpg

    from workers.replay import select_requests, summarize

    connection = await asyncpg.connect(settings.database_url)
    try:
        groups = await summarize(connection, selection)
        count = len(await select_requests(connection, selection))
    finally:
        await connection.close()
    for group in groups:
        oldest = group.oldest.astimezone(UTC).isoformat(timespec="seconds")
        print(f"{group.source}\t{group.reason}\t{group.requests}\toldest {oldest}")
    total = sum(group.requests for group in groups)
    if total > count:
        print(f"(--limit {selection.limit}: the oldest {count} of {total})")
    print(f"{count} request(s) would be sent again")
    return 0


async def _replay_with_progress(settings: Settings, selection: ReplaySelection) -> int:
    from cdrflow.progress import Progress
    from workers.replay import replay

    progress = Progress(None, unit="request", event="replay_progress")
    try:
        count = await replay(
            settings, selection, selected=progress.expect, progress=progress.update
        )
    finally:
        progress.close()
    print(f"{count} request(s) sent again")
    if selection.limit and count == selection.limit:
        print(f"the limit ({selection.limit}) was reached: more may be waiting")
    return 0


def _offset(text: str) -> int:
    offset = int(text)
    if offset < 0:
        raise ValueError(text)
    return offset


def cmd_tail(settings: Settings, args: argparse.Namespace) -> int:
    from workers.tail import StreamStart, TailError, tail

    origins = [o for o in (args.since, args.origin, args.offset) if o is not None]
    stream_start = StreamStart(origins[0]) if origins else None

    async def start(stopping: asyncio.Event) -> int:
        await tail(
            settings, args.binding, sys.stdout, stopping, count=args.count, start=stream_start
        )
        return 0

    try:
        return _run_until_signalled(start)
    except TailError as exc:
        print(f"cdrflow tail: {exc}", file=sys.stderr)
        return 1


def cmd_history(settings: Settings, args: argparse.Namespace) -> int:
    from workers.history import print_history

    by_key = args.source is not None and args.external_id is not None
    if by_key == (args.record_id is not None):
        print("cdrflow history: give SOURCE EXTERNAL_ID, or --record-id", file=sys.stderr)
        return EXIT_CONFIG
    key = (args.source, args.external_id) if by_key else args.record_id
    return asyncio.run(print_history(settings.database_url, key, as_json=args.json))


def cmd_republish(settings: Settings, args: argparse.Namespace) -> int:
    from workers.republish import (
        RepublishError,
        RepublishSelection,
        Target,
        republish_with_progress,
    )

    selection = RepublishSelection(args.since, args.until, args.source, args.tenant)
    try:
        target = Target(args.to_queue, args.routing_key)
        sent = asyncio.run(republish_with_progress(settings, selection, target))
    except RepublishError as exc:
        print(f"cdrflow republish: {exc}", file=sys.stderr)
        return 1
    print(f"{sent} record(s) republished to {target}")
    return 0


def cmd_simulate(settings: Settings, args: argparse.Namespace) -> int:
    from cdrflow.simulate import simulate

    report = asyncio.run(
        simulate(
            args.url,
            _sources(settings),
            default_registry(),
            rate=args.rate,
            count=args.count,
            repush=args.repush,
            bad=args.bad,
            seed=args.seed,
        )
    )
    print(orjson.dumps(report.as_dict()).decode())
    return 0


COMMANDS: dict[str, Callable[[Settings, argparse.Namespace], int]] = {
    "ingress": cmd_ingress,
    "worker": cmd_worker,
    "migrate": cmd_migrate,
    "check": cmd_check,
    "replay": cmd_replay,
    "tail": cmd_tail,
    "history": cmd_history,
    "republish": cmd_republish,
    "simulate": cmd_simulate,
}


if __name__ == "__main__":
    sys.exit(main())
