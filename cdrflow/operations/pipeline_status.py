"""`cdrflow status`: the pipeline's state on one screen, and what in it needs a human.

Queue figures come from passive declares (depth and consumers: what every broker answers,
management plugin or not); the rest from PostgreSQL, each figure one indexed query:
stored callbacks per source over the last hour from the deliveries ledger (by received
time, read through the ingest ids' time), a source's last callback from the same ledger,
or, when it sent nothing within the hour, from its newest record (`0005_console_indexes`).
The console's overview shows the same figures (`console.overview`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from aio_pika.abc import AbstractChannel

from cdrflow.amqp import connect
from cdrflow.settings import Settings

RATE_WINDOW_SECONDS = 300  # the stored rate is an average over this window


def received_within(window: str, alias: str = "d") -> str:
    """The condition on `deliveries` (as `alias`) of the rows received within `window`, an
    SQL interval. It bounds `ingest_id` too, so that only the partitions of that time are
    read, through the primary key: the ingress makes an ingest id (a UUID 7, whose first
    48 bits are its milliseconds) just before the received time it stamps, on the same
    clock, and the bound leaves a minute to spare. Plain SQL, for any schema version."""
    floor = f"floor(extract(epoch FROM now() - {window} - interval '1 minute') * 1000)"
    return (
        f"{alias}.ingest_id >= (lpad(to_hex({floor}::bigint), 12, '0')"
        f" || '00000000000000000000')::uuid AND {alias}.received_at >= now() - {window}"
    )


_PER_SOURCE_LAST_HOUR = f"""
SELECT c.source, count(*) AS callbacks, max(d.received_at) AS last_callback
FROM deliveries d JOIN call_records c ON c.record_id = d.record_id
WHERE {received_within("interval '1 hour'")}
GROUP BY c.source
"""  # noqa: S608 (a constant condition; no value in it)
_NEWEST_RECORD = """
SELECT received_at FROM call_records WHERE source = $1 ORDER BY received_at DESC LIMIT 1
"""
_STORED_SINCE = f"SELECT count(*) FROM deliveries d WHERE {received_within('$1::interval')}"  # noqa: S608
_OUTBOX = "SELECT count(*) AS rows, min(created_at) AS oldest, now() AS now FROM outbox"
_OPEN_REJECTIONS = """
SELECT reason, count(*) AS open FROM rejected_callbacks WHERE resolved_at IS NULL
GROUP BY reason ORDER BY reason
"""
_SOURCES = "SELECT DISTINCT source FROM rejected_callbacks WHERE resolved_at IS NULL"


@dataclass(frozen=True)
class QueueState:
    name: str
    messages: int | None  # None: the queue does not exist (nothing declared it yet)
    consumers: int | None


@dataclass(frozen=True)
class SourceState:
    name: str
    last_callback: datetime | None
    last_hour: int


PARTITIONS_AHEAD_MIN_HOURS = 48
PARTITIONED_SINCE = 9  # the schema version that partitions deliveries and rejected_callbacks


@dataclass
class PipelineStatus:
    raw: QueueState | None = None  # None: RabbitMQ did not answer
    dead: QueueState | None = None
    stored_per_second: float | None = None  # None: PostgreSQL did not answer
    outbox_rows: int = 0
    outbox_oldest_seconds: float | None = None
    open_rejections: dict[str, int] = field(default_factory=dict)
    sources: list[SourceState] = field(default_factory=list)
    schema_version: int | None = None
    latest_schema: int = 0
    # Schema 12's partitioning left for a `cdrflow migrate` run after the previous release's
    # workers have gone (workers.storage.records_partitioning).
    records_partitioning_pending: bool = False
    # Per time-partitioned table: hours its partitions still cover (`cdrflow retention`).
    partitions_ahead_hours: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def problems(self, outbox_limit_seconds: float) -> list[str]:
        """What needs a human, one line each; empty when nothing does."""
        found = list(self.errors)
        if self.raw is not None and not self.raw.consumers:
            found.append(f"no consumer on {self.raw.name}: no worker is running")
        if self.dead is not None and self.dead.messages:
            found.append(
                f"{self.dead.messages} message(s) parked in {self.dead.name}: `cdrflow dead list`"
            )
        oldest = self.outbox_oldest_seconds
        if oldest is not None and oldest > outbox_limit_seconds:
            found.append(
                f"outbox rows waiting {oldest:.0f} s (past {outbox_limit_seconds:.0f} s):"
                " records committed but not published"
            )
        for table, hours in self.partitions_ahead_hours.items():
            if hours < PARTITIONS_AHEAD_MIN_HOURS:
                found.append(
                    f"{table}: partitions cover only {hours:.0f} h ahead (a week when"
                    " `cdrflow retention` runs hourly): is its schedule running?"
                )
        if self.schema_version is not None and self.schema_version < self.latest_schema:
            found.append(
                f"database schema version {self.schema_version}, this release needs"
                f" {self.latest_schema}: `cdrflow migrate`"
            )
        return found

    def as_dict(self, outbox_limit_seconds: float) -> dict[str, Any]:
        return {
            "raw_queue": _queue_dict(self.raw),
            "dead_queue": _queue_dict(self.dead),
            "stored_per_second": self.stored_per_second,
            "outbox": {"rows": self.outbox_rows, "oldest_seconds": self.outbox_oldest_seconds},
            "open_rejections": self.open_rejections,
            "sources": [
                {
                    "source": s.name,
                    "last_callback": _iso(s.last_callback),
                    "last_hour": s.last_hour,
                }
                for s in self.sources
            ],
            "schema_version": self.schema_version,
            "latest_schema_version": self.latest_schema,
            "records_partitioning_pending": self.records_partitioning_pending,
            "partitions_ahead_hours": self.partitions_ahead_hours,
            "problems": self.problems(outbox_limit_seconds),
        }


def outbox_limit(settings: Settings) -> float:
    """Past this age an outbox row is late: the relay takes rows older than the grace
    period, once every interval."""
    return settings.outbox_grace_seconds + 2 * settings.outbox_interval_seconds


def _queue_dict(queue: QueueState | None) -> dict[str, Any] | None:
    if queue is None:
        return None
    return {"name": queue.name, "messages": queue.messages, "consumers": queue.consumers}


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat(timespec="seconds") if moment else None


async def queue_state(channel: AbstractChannel, name: str) -> QueueState:
    """Depth and consumers by a passive declare: a missing queue closes the channel, which
    the caller then reopens."""
    declared = await channel.declare_queue(name, passive=True)
    result = declared.declaration_result
    return QueueState(name, int(result.message_count or 0), int(result.consumer_count or 0))


async def read_queues(settings: Settings, status: PipelineStatus) -> None:
    try:
        connection = await asyncio.wait_for(connect(settings.amqp_url, "cdrflow-status"), 10)
    except Exception as exc:
        status.errors.append(f"RabbitMQ did not answer: {type(exc).__name__}")
        return
    try:
        for name, attribute in ((settings.raw_queue, "raw"), (settings.dead_queue, "dead")):
            channel = await connection.channel()
            try:
                setattr(status, attribute, await queue_state(channel, name))
            except Exception:
                setattr(status, attribute, QueueState(name, None, None))
                status.errors.append(f"{name} does not exist: no process has declared it yet")
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(connection.close(), 5)


async def read_database(
    connection: asyncpg.Connection, status: PipelineStatus, sources: Iterable[str]
) -> None:
    from workers.storage.migrate import LATEST, schema_version

    status.latest_schema = LATEST
    status.schema_version = await schema_version(connection)
    if status.schema_version == 0:
        return  # nothing to read before `cdrflow migrate`
    stored = await connection.fetchval(_STORED_SINCE, timedelta(seconds=RATE_WINDOW_SECONDS))
    status.stored_per_second = int(stored) / RATE_WINDOW_SECONDS
    outbox = await connection.fetchrow(_OUTBOX)
    assert outbox is not None
    status.outbox_rows = int(outbox["rows"])
    if outbox["oldest"] is not None:
        status.outbox_oldest_seconds = (outbox["now"] - outbox["oldest"]).total_seconds()
    status.open_rejections = {
        row["reason"]: int(row["open"]) for row in await connection.fetch(_OPEN_REJECTIONS)
    }
    status.sources = await source_states(connection, sources)
    from workers.storage.records_partitioning import is_pending

    status.records_partitioning_pending = await is_pending(connection)
    if status.schema_version >= PARTITIONED_SINCE:
        from workers.storage.partition_retention import hours_ahead

        now = await connection.fetchval("SELECT now()")
        status.partitions_ahead_hours = await hours_ahead(connection, now)


async def source_states(
    connection: asyncpg.Connection, sources: Iterable[str]
) -> list[SourceState]:
    """Each source's last hour: the configured ones, and any other the database knows of
    from the hour or from open rejections."""
    hour = {row["source"]: row for row in await connection.fetch(_PER_SOURCE_LAST_HOUR)}
    rejected = {row["source"] for row in await connection.fetch(_SOURCES)}
    states = []
    for name in sorted({*sources, *hour, *rejected}):
        row = hour.get(name)
        if row is not None:
            states.append(SourceState(name, row["last_callback"], int(row["callbacks"])))
        else:
            states.append(SourceState(name, await connection.fetchval(_NEWEST_RECORD, name), 0))
    return states


async def gather_status(settings: Settings, sources: Iterable[str]) -> PipelineStatus:
    status = PipelineStatus()
    await read_queues(settings, status)
    try:
        connection = await asyncio.wait_for(asyncpg.connect(settings.database_url), 10)
    except Exception as exc:
        status.errors.append(f"PostgreSQL did not answer: {type(exc).__name__}")
        return status
    try:
        await read_database(connection, status, sources)
    except asyncpg.PostgresError as exc:
        status.errors.append(f"PostgreSQL answered with an error: {type(exc).__name__}: {exc}")
    finally:
        await connection.close()
    return status


def render(status: PipelineStatus, outbox_limit_seconds: float) -> str:
    """The terminal screen."""
    lines = [_queue_line(status.raw, "raw queue"), _queue_line(status.dead, "dead letters")]
    if status.stored_per_second is not None:
        lines.append(
            f"{'stored':<14}{status.stored_per_second:.1f} callbacks/s"
            f" (last {RATE_WINDOW_SECONDS // 60} min)"
        )
    oldest = status.outbox_oldest_seconds
    age = f", oldest {oldest:.0f} s" if oldest is not None else ""
    lines.append(f"{'outbox':<14}{status.outbox_rows} row(s){age}")
    open_ = ", ".join(f"{reason} {n}" for reason, n in status.open_rejections.items())
    lines.append(f"{'rejections':<14}{open_ or 'none open'}")
    if status.schema_version is not None:
        lines.append(
            f"{'schema':<14}version {status.schema_version} (this release: {status.latest_schema})"
            + (
                "; records' partitioning pending (`cdrflow migrate` once the previous"
                " release's workers have stopped)"
                if status.records_partitioning_pending
                else ""
            )
        )
    if status.sources:
        lines.append("")
        lines.append(f"{'source':<20}{'last callback':<27}last hour")
        for source in status.sources:
            last = _iso(source.last_callback) or "never"
            lines.append(f"{source.name:<20}{last:<27}{source.last_hour}")
    problems = status.problems(outbox_limit_seconds)
    lines.append("")
    lines.extend(f"NEEDS A HUMAN: {problem}" for problem in problems)
    if not problems:
        lines.append("all well")
    return "\n".join(lines)


def _queue_line(queue: QueueState | None, label: str) -> str:
    if queue is None:
        return f"{label:<14}unknown (RabbitMQ did not answer)"
    if queue.messages is None:
        return f"{label:<14}{queue.name}: missing"
    consumers = f", {queue.consumers} consumer(s)" if label == "raw queue" else ""
    return f"{label:<14}{queue.name}: {queue.messages} message(s){consumers}"
