"""`cdrflow republish`: send stored records again, to one consumer, for history older than
the records stream keeps.

A record is selected when its current revision was stored in [since, until) (`updated_at`):
the same window in which the live pipeline published that revision, so a consumer that
republishes up to a time and reads the stream from that time misses nothing. Each record is
sent as the live pipeline sends it (the body and properties of `workers.outbox`, the same
`message_id` `{record_id}:{revision}`), so a consumer's dedup absorbs any overlap. The body
carries the ledger as it is now (`delivery_count`, `last_seen_at` may have moved since).

The target is one queue (through the default exchange) or one routing key on the records
exchange that only that consumer binds. Messages are persistent, mandatory (nothing
unroutable passes as sent) and confirmed; the first failure stops the run."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiormq
import asyncpg
from aio_pika.abc import AbstractChannel, AbstractExchange
from tqdm import tqdm

from cdrflow.amqp import connect, declare
from cdrflow.logs import get_logger
from cdrflow.operations.tail import TopicPattern
from cdrflow.settings import Settings
from schemas.jsoncodec import loads_exact
from schemas.record import (
    LEDGER_COLUMNS,
    RECORD_COLUMNS,
    CallRecord,
    CallType,
    Direction,
    HangupBy,
    Ledger,
    Status,
    published_body,
    routing_key,
)
from schemas.topology import RECORD_KEY_SHAPE
from workers.batch import OutboxEntry
from workers.outbox import record_message

log = get_logger("cdrflow.republish")

WINDOW = 200  # publishes awaiting their confirms at once
CONFIRM_TIMEOUT = 30.0
PROGRESS_LOG_SECONDS = 5.0

_WHERE = """
WHERE updated_at >= $1 AND ($2::timestamptz IS NULL OR updated_at < $2)
  AND ($3::text IS NULL OR source = $3) AND ($4::text IS NULL OR tenant = $4)
"""
# Keyset pages, not one long transaction: a long republish holds no snapshot open.
_PAGE = f"""
SELECT {", ".join(c for c in RECORD_COLUMNS if c != "raw")}, {", ".join(LEDGER_COLUMNS)}, updated_at
FROM call_records {_WHERE}
  AND ($5::timestamptz IS NULL OR (updated_at, record_id) > ($5, $6::uuid))
ORDER BY updated_at, record_id LIMIT {WINDOW}
"""  # noqa: S608 (identifiers are constants; values are parameters)
_COUNT = f"SELECT count(*) FROM call_records {_WHERE}"  # noqa: S608


class RepublishError(Exception):
    """The target refused a record, or does not exist."""


@dataclass(frozen=True, slots=True)
class RepublishSelection:
    since: datetime
    until: datetime | None = None
    source: str | None = None
    tenant: str | None = None

    @property
    def parameters(self) -> tuple[Any, ...]:
        return (self.since, self.until, self.source, self.tenant)


@dataclass(frozen=True, slots=True)
class Target:
    """One consumer's queue, or one routing key on the records exchange."""

    queue: str | None = None
    routing_key: str | None = None

    def __post_init__(self) -> None:
        if (self.queue is None) == (self.routing_key is None):
            raise RepublishError("a target is a queue or a routing key, not both or neither")
        if self.routing_key is not None and TopicPattern(RECORD_KEY_SHAPE).matches(
            self.routing_key
        ):
            raise RepublishError(
                f"routing key {self.routing_key!r} has the shape of a live record's: every "
                "consumer bound to it and the records stream would get the records again; "
                "use a key that only one queue binds, e.g. republish.billing"
            )

    def __str__(self) -> str:
        return f"queue {self.queue}" if self.queue else f"routing key {self.routing_key}"


def record_of(row: asyncpg.Record) -> tuple[CallRecord, Ledger]:
    """A stored row as the record and ledger the live pipeline published it from."""
    fields = {c: row[c] for c in RECORD_COLUMNS if c not in ("record_id", "raw")}
    fields["status"] = Status(row["status"])
    fields["call_type"] = _optional(CallType, row["call_type"])
    fields["direction"] = _optional(Direction, row["direction"])
    fields["hangup_by"] = _optional(HangupBy, row["hangup_by"])
    fields["labels"] = tuple(row["labels"])
    extra = row["extra"]
    fields["extra"] = loads_exact(extra) if isinstance(extra, str | bytes) else extra
    ledger = Ledger(**{name: row[name] for name in LEDGER_COLUMNS})
    return CallRecord(raw={}, **fields), ledger


def _optional(kind: Callable[[str], Any], value: str | None) -> Any:
    return None if value is None else kind(value)


def entry_of(row: asyncpg.Record) -> OutboxEntry:
    record, ledger = record_of(row)
    return OutboxEntry(
        outbox_id=0,
        record_id=record.record_id,
        revision=ledger.revision,
        routing_key=routing_key(record),
        body=published_body(record, ledger),
    )


async def count_selected(settings: Settings, selection: RepublishSelection) -> int:
    connection = await asyncpg.connect(settings.database_url)
    try:
        return int(await connection.fetchval(_COUNT, *selection.parameters))
    finally:
        await connection.close()


async def republish(
    settings: Settings,
    selection: RepublishSelection,
    target: Target,
    progress: Callable[[int], None] = lambda _sent: None,
) -> int:
    """Send the selected records to the target; returns how many were confirmed.
    `progress` is told each confirmed window's size."""
    broker = await connect(settings.amqp_url, "cdrflow-republish")
    try:
        channel = await broker.channel(publisher_confirms=True, on_return_raises=True)
        exchange, key = await _resolve(channel, settings, target)
        sent = 0
        async for window in _selected(settings, selection):
            await _publish_window(exchange, key, window, target)
            sent += len(window)
            progress(len(window))
        log.info("records_republished", count=sent, target=str(target))
        return sent
    finally:
        await broker.close()


async def _resolve(
    channel: AbstractChannel, settings: Settings, target: Target
) -> tuple[AbstractExchange, str]:
    if target.queue is not None:
        try:
            await channel.declare_queue(target.queue, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity as exc:
            raise RepublishError(f"queue {target.queue!r} does not exist") from exc
        return channel.default_exchange, target.queue
    assert target.routing_key is not None
    exchanges = await declare(channel, settings.topology())
    return exchanges[settings.records_exchange], target.routing_key


async def _selected(
    settings: Settings, selection: RepublishSelection
) -> AsyncIterator[list[OutboxEntry]]:
    """The selected records, oldest revision first, a window at a time: any number of
    records in bounded memory. A record revised meanwhile moves past the window's end: it
    comes again later with its new revision, or not at all when that is past `until`."""
    connection = await asyncpg.connect(settings.database_url)
    try:
        after: tuple[Any, Any] = (None, None)
        while rows := await connection.fetch(_PAGE, *selection.parameters, *after):
            yield [entry_of(row) for row in rows]
            after = (rows[-1]["updated_at"], rows[-1]["record_id"])
    finally:
        await connection.close()


async def _publish_window(
    exchange: AbstractExchange, key: str, window: list[OutboxEntry], target: Target
) -> None:
    results = await asyncio.gather(
        *(
            exchange.publish(record_message(e), key, mandatory=True, timeout=CONFIRM_TIMEOUT)
            for e in window
        ),
        return_exceptions=True,
    )
    for entry, result in zip(window, results, strict=True):
        if isinstance(result, BaseException):
            raise RepublishError(
                f"{target} did not take {entry.message_id}: {type(result).__name__}: {result}"
            ) from result


class Progress:
    """A progress bar on a terminal; elsewhere a log line every few seconds."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self._logged_at = time.monotonic()
        self._bar: tqdm[Any] | None = None
        if sys.stderr.isatty():
            self._bar = tqdm(total=total, unit="record", file=sys.stderr)

    def __call__(self, sent: int) -> None:
        self.done += sent
        if self._bar is not None:
            self._bar.update(sent)
        elif time.monotonic() - self._logged_at >= PROGRESS_LOG_SECONDS:
            self._logged_at = time.monotonic()
            log.info("republish_progress", sent=self.done, total=self.total)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


async def republish_with_progress(
    settings: Settings, selection: RepublishSelection, target: Target
) -> int:
    progress = Progress(await count_selected(settings, selection))
    try:
        return await republish(settings, selection, target, progress)
    finally:
        progress.close()
