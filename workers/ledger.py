"""Storing a batch in one transaction, and the deduplication ledger.

1. Claim the batch's deliveries in `deliveries` (ON CONFLICT DO NOTHING): a delivery seen
   before (a raw message delivered twice) counts once, however often it comes back.
2. Merge the fresh deliveries per record into versions (`workers.versions`).
3. COPY the versions into the staging table, then `INSERT ... SELECT ... ON CONFLICT`,
   one statement per round, since one statement may not touch a key twice:
   - same content as stored: `delivery_count` and `last_seen_at` move, nothing else;
   - other content, newer than the stored content: the record's fields are replaced and
     `revision` goes up; an older one (a late replay) only counts as a delivery.
4. Each new record and new revision gets an `outbox` row: the message to publish.
5. Rejections go to `rejected_callbacks`; replays that now succeed resolve theirs."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from cdrflow.logs import get_logger
from schemas.jsoncodec import dumps
from schemas.record import (
    CONTENT_COLUMNS,
    RECORD_COLUMNS,
    Ledger,
    published_body,
    routing_key,
)
from workers.db import STAGE_COLUMNS, STAGE_TABLE
from workers.normalize import WHOLE_REQUEST, Normalized, Rejection, as_request
from workers.outbox import OutboxEntry
from workers.sanitize import sanitize
from workers.versions import Delivery, Version, plan_versions

log = get_logger("cdrflow.worker.store")

Connection = asyncpg.Connection | PoolConnectionProxy


@dataclass(frozen=True, slots=True)
class BatchResult:
    published: list[OutboxEntry]  # new records and new revisions, to publish
    fresh: int  # deliveries not seen before (the rest were redelivered messages)
    versions: int
    rejected: list[Rejection]


_CLAIM = """
INSERT INTO deliveries (ingest_id, item, record_id, received_at)
SELECT * FROM unnest($1::uuid[], $2::integer[], $3::uuid[], $4::timestamptz[])
ON CONFLICT DO NOTHING
RETURNING ingest_id, item
"""

_NEWER = (
    "(c.content_hash <> excluded.content_hash"
    " AND excluded.content_received_at >= c.content_received_at)"
)
_REPLACED = (
    *CONTENT_COLUMNS,
    "content_hash",
    "content_received_at",
    "content_ingest_id",
    "content_item",
)
_UPSERT = f"""
INSERT INTO call_records AS c (
    {", ".join(RECORD_COLUMNS)}, received_at, first_seen_at, last_seen_at, delivery_count,
    revision, content_hash, content_received_at, content_ingest_id, content_item)
SELECT {", ".join(RECORD_COLUMNS)}, first_received_at, first_received_at, last_received_at,
    deliveries, 1, content_hash, first_received_at, ingest_id, item
FROM {STAGE_TABLE} WHERE round = $1
ORDER BY source, external_id  -- one lock order for all workers: no deadlocks between them
ON CONFLICT (source, external_id) DO UPDATE SET
    delivery_count = c.delivery_count + excluded.delivery_count,
    received_at = least(c.received_at, excluded.received_at),
    first_seen_at = least(c.first_seen_at, excluded.first_seen_at),
    last_seen_at = greatest(c.last_seen_at, excluded.last_seen_at),
    revision = c.revision + CASE WHEN {_NEWER} THEN 1 ELSE 0 END,
    updated_at = CASE WHEN {_NEWER} THEN now() ELSE c.updated_at END,
    {", ".join(f"{c} = CASE WHEN {_NEWER} THEN excluded.{c} ELSE c.{c} END" for c in _REPLACED)}
RETURNING record_id, revision, delivery_count, received_at, stored_at, first_seen_at,
    last_seen_at, content_ingest_id, content_item
"""  # noqa: S608 (identifiers are constants; values are parameters)

_OUTBOX = """
INSERT INTO outbox (record_id, revision, routing_key, body)
SELECT * FROM unnest($1::uuid[], $2::integer[], $3::text[], $4::bytea[])
RETURNING outbox_id, record_id, revision
"""

_REJECT = """
INSERT INTO rejected_callbacks
    (ingest_id, item, source, tenant, provider, received_at, reason, message, request, body)
SELECT * FROM unnest($1::uuid[], $2::integer[], $3::text[], $4::text[], $5::text[],
    $6::timestamptz[], $7::text[], $8::text[], $9::jsonb[], $10::bytea[])
ON CONFLICT (ingest_id, item) DO UPDATE SET
    reason = excluded.reason, message = excluded.message, last_failed_at = now()
"""

_RESOLVE = """
UPDATE rejected_callbacks r SET resolved_at = now(), record_id = u.record_id
FROM unnest($1::uuid[], $2::integer[], $3::uuid[]) AS u(ingest_id, item, record_id)
WHERE r.ingest_id = u.ingest_id AND r.item = u.item AND r.resolved_at IS NULL
"""


async def write_batch(connection: Connection, normalized: Normalized) -> BatchResult:
    """Store one batch in one transaction. Raises what the database raises."""
    async with connection.transaction():
        fresh = await _claim(connection, normalized.deliveries)
        versions = plan_versions(fresh)
        published = await _upsert(connection, versions) if versions else []
        if published:
            await _add_to_outbox(connection, published)
        rejections = _unique_rejections(normalized.rejections)
        if rejections:
            await connection.execute(_REJECT, *_rejection_columns(rejections))
        await _resolve_replays(connection, fresh, normalized)
    return BatchResult(published, len(fresh), len(versions), rejections)


async def _claim(connection: Connection, deliveries: list[Delivery]) -> list[Delivery]:
    unique: dict[tuple[uuid.UUID, int], Delivery] = {}
    for delivery in deliveries:
        unique.setdefault((delivery.ingest_id, delivery.item), delivery)
    if not unique:
        return []
    items = list(unique.values())
    rows = await connection.fetch(
        _CLAIM,
        [d.ingest_id for d in items],
        [d.item for d in items],
        [d.record.record_id for d in items],
        [d.received_at for d in items],
    )
    claimed = {(row["ingest_id"], row["item"]) for row in rows}
    if len(claimed) < len(items):
        log.info("deliveries_seen_before", count=len(items) - len(claimed))
    return [d for d in items if (d.ingest_id, d.item) in claimed]


def _stage_row(version: Version) -> tuple[Any, ...]:
    record = version.first.record
    columns = record.columns()
    columns["raw"] = dumps(record.raw).decode()
    columns["extra"] = dumps(record.extra).decode()
    columns["labels"] = list(record.labels)
    return (
        version.round,
        version.deliveries,
        version.first_received_at,
        version.last_received_at,
        version.first.ingest_id,
        version.first.item,
        version.first.content_hash,
        *(_plain(columns[name]) for name in RECORD_COLUMNS),
    )


def _plain(value: Any) -> Any:
    # StrEnum members are str subclasses; hand the driver plain strings.
    return str(value) if isinstance(value, str) else value


async def _upsert(connection: Connection, versions: list[Version]) -> list[OutboxEntry]:
    await connection.copy_records_to_table(
        STAGE_TABLE, records=[_stage_row(v) for v in versions], columns=STAGE_COLUMNS
    )
    by_round: dict[tuple[int, uuid.UUID], Version] = {
        (v.round, v.first.record.record_id): v for v in versions
    }
    published = []
    for round_ in range(max(v.round for v in versions) + 1):
        for row in await connection.fetch(_UPSERT, round_):
            version = by_round[(round_, row["record_id"])]
            first = version.first
            if (row["content_ingest_id"], row["content_item"]) != (first.ingest_id, first.item):
                continue  # same content as stored, or older than it: counted, not published
            ledger = Ledger(
                received_at=row["received_at"],
                stored_at=row["stored_at"],
                first_seen_at=row["first_seen_at"],
                last_seen_at=row["last_seen_at"],
                delivery_count=row["delivery_count"],
                revision=row["revision"],
            )
            published.append(
                OutboxEntry(
                    outbox_id=0,
                    record_id=row["record_id"],
                    revision=row["revision"],
                    routing_key=routing_key(first.record),
                    body=published_body(first.record, ledger),
                )
            )
    return published


async def _add_to_outbox(connection: Connection, entries: list[OutboxEntry]) -> None:
    rows = await connection.fetch(
        _OUTBOX,
        [e.record_id for e in entries],
        [e.revision for e in entries],
        [e.routing_key for e in entries],
        [e.body for e in entries],
    )
    ids = {(row["record_id"], row["revision"]): row["outbox_id"] for row in rows}
    for index, entry in enumerate(entries):
        entries[index] = OutboxEntry(
            ids[(entry.record_id, entry.revision)],
            entry.record_id,
            entry.revision,
            entry.routing_key,
            entry.body,
        )


def _unique_rejections(rejections: list[Rejection]) -> list[Rejection]:
    unique: dict[tuple[uuid.UUID, int], Rejection] = {}
    for rejection in rejections:
        unique[(rejection.ingest_id, rejection.item)] = rejection
    return list(unique.values())


def _rejection_columns(rejections: list[Rejection]) -> list[list[Any]]:
    return [
        [r.ingest_id for r in rejections],
        [r.item for r in rejections],
        [r.envelope.source for r in rejections],
        [r.envelope.tenant for r in rejections],
        [r.envelope.provider for r in rejections],
        [r.envelope.received_at for r in rejections],
        [str(r.reason) for r in rejections],
        [sanitize(r.message) for r in rejections],
        [dumps(sanitize(as_request(r.envelope))).decode() for r in rejections],
        [r.envelope.body for r in rejections],
    ]


async def _resolve_replays(
    connection: Connection, fresh: list[Delivery], normalized: Normalized
) -> None:
    resolved: list[tuple[uuid.UUID, int, uuid.UUID | None]] = [
        (d.ingest_id, d.item, d.record.record_id) for d in fresh if d.envelope.replay
    ]
    failed_whole = {r.ingest_id for r in normalized.rejections if r.item == WHOLE_REQUEST}
    replayed = {d.ingest_id for d in normalized.deliveries if d.envelope.replay}
    resolved += [(i, WHOLE_REQUEST, None) for i in replayed - failed_whole]
    if resolved:
        ids, items, records = zip(*resolved, strict=True)
        await connection.execute(_RESOLVE, list(ids), list(items), list(records))
