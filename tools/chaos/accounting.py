"""Where every callback of a scenario ended: waiting for the pipeline to settle, then
counting rows in PostgreSQL and records on the downstream queue, by external id."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import aio_pika
import asyncpg
from aio_pika.abc import AbstractIncomingMessage

from schemas.jsoncodec import loads
from tools.chaos.traffic import Answers

DOWNSTREAM_QUEUE = "chaos.downstream"


@dataclass
class Tally:
    scenario: str
    sent: int = 0
    success: int = 0
    refused: int = 0
    stored: int = 0
    rejected: int = 0
    lost: int = 0
    duplicates: int = 0
    published: int = 0
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


@dataclass
class Rows:
    """The rows of one scenario's ids: records by id, and rejections by id."""

    records: dict[str, list[str]] = field(default_factory=dict)  # external id -> record ids
    rejected: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)

    def found(self) -> set[str]:
        return set(self.records) | set(self.rejected)


async def fetch_rows(db: asyncpg.Connection, tag: str) -> Rows:
    rows = Rows()
    for r in await db.fetch(
        "SELECT external_id, record_id::text AS record_id FROM call_records"
        " WHERE external_id LIKE $1",
        f"{tag}t%",
    ):
        rows.records.setdefault(r["external_id"], []).append(r["record_id"])
    # A rejected callback has no external id column: its id is in the body or the query.
    for r in await db.fetch(
        "SELECT reason, (regexp_match(encode(body, 'escape') || ' '"
        " || coalesce(request->>'query', ''), $1))[1] AS id FROM rejected_callbacks",
        f"{tag}t[0-9]+n[0-9]+",
    ):
        if r["id"] is not None:
            rows.rejected[r["id"]] += 1
            rows.reasons[r["reason"]] += 1
    return rows


async def raw_ready(amqp_url: str, queue: str) -> int | None:
    try:
        connection = await aio_pika.connect(amqp_url, timeout=5)
    except (TimeoutError, OSError, aio_pika.exceptions.AMQPError):
        return None
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        return int(declared.declaration_result.message_count or 0)


@dataclass(frozen=True)
class Settle:
    database_url: str
    amqp_url: str
    raw_queue: str
    spool_records: Callable[[], float | None]
    timeout: float = 120
    quiet_seconds: float = 20  # nothing moves for this long: what is missing stays missing


async def settle(how: Settle, tag: str, expected: set[str]) -> tuple[Rows, str]:
    """Wait until every id answered success is found, the spool, `cdr.raw` and the outbox
    are empty; or nothing has moved for `quiet_seconds`; or `timeout`."""
    db = await asyncpg.connect(how.database_url)
    try:
        started = last_change = time.monotonic()
        last_seen = -1
        while True:
            rows = await fetch_rows(db, tag)
            outbox = await db.fetchval("SELECT count(*) FROM outbox")
            ready = await raw_ready(how.amqp_url, how.raw_queue)
            spooled = how.spool_records()
            idle = outbox == 0 and ready == 0 and spooled == 0
            seen = len(rows.records) + sum(rows.rejected.values())
            now = time.monotonic()
            if seen != last_seen or not idle:
                last_seen, last_change = seen, now
            if idle and expected <= rows.found():
                return rows, f"settled in {now - started:.0f} s"
            if idle and now - last_change > how.quiet_seconds:
                return rows, f"quiet for {how.quiet_seconds:.0f} s with ids missing"
            if now - started > how.timeout:
                state = f"outbox {outbox}, cdr.raw ready {ready}, spool {spooled}"
                return rows, f"not settled after {how.timeout:.0f} s ({state})"
            await asyncio.sleep(1)
    finally:
        await db.close()


async def declare_downstream(amqp_url: str, exchange: str) -> None:
    """A consumer's own queue, bound to the records exchange with `#`."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        records = await channel.declare_exchange(
            exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(
            DOWNSTREAM_QUEUE, durable=True, arguments={"x-queue-type": "quorum"}
        )
        await queue.bind(records, routing_key="#")


async def drain(amqp_url: str, queue: str, idle_seconds: float = 2.0) -> list[bytes]:
    """Every message on `queue` until it is empty and nothing came for `idle_seconds`."""
    bodies: list[bytes] = []
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=2000)
        target = await channel.get_queue(queue, ensure=False)

        async def take(message: AbstractIncomingMessage) -> None:
            bodies.append(message.body)

        await target.consume(take, no_ack=True)
        seen = -1
        while seen != len(bodies):
            seen = len(bodies)
            await asyncio.sleep(idle_seconds)
    return bodies


def published_by_id(bodies: list[bytes], tag: str) -> dict[str, set[str]]:
    """Record ids received downstream, by external id, for one scenario's ids."""
    found: dict[str, set[str]] = {}
    for body in bodies:
        record = loads(body)
        external_id = str(record.get("external_id", ""))
        if external_id.startswith(f"{tag}t"):
            found.setdefault(external_id, set()).add(str(record["record_id"]))
    return found


def tally(scenario: str, answers: Answers, rows: Rows, published: dict[str, set[str]]) -> Tally:
    success = answers.success
    found = rows.found()
    stored_ids = {r for ids in rows.records.values() for r in ids}
    published_ids = {r for ids in published.values() for r in ids}
    lost = sorted(success - found)
    doubled = sorted(i for i in found if len(rows.records.get(i, ())) + rows.rejected[i] > 1)
    unpublished = sorted(i for i, ids in rows.records.items() if not set(ids) & published_ids)
    notes = [f"rejected by reason: {dict(rows.reasons)}"] if rows.reasons else []
    for what, ids in (("lost", lost), ("duplicate", doubled), ("unpublished", unpublished)):
        if ids:
            notes.append(f"{what} ids, first of {len(ids)}: {', '.join(ids[:5])}")
    return Tally(
        scenario=scenario,
        sent=answers.sent,
        success=len(success),
        refused=answers.refused,
        stored=len(stored_ids),
        rejected=sum(rows.rejected.values()),
        lost=len(success - found),
        duplicates=sum(max(0, len(rows.records.get(i, ())) + rows.rejected[i] - 1) for i in found),
        published=len(stored_ids & published_ids),
        notes=notes,
    )
