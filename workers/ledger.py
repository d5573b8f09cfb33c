"""Storing a batch in one transaction, and the deduplication ledger.

1. Claim the batch's deliveries in `deliveries` (ON CONFLICT DO NOTHING): a delivery seen
   before (a raw message delivered twice) counts once, however often it comes back.
2. Group the fresh deliveries per record and per content (`workers.versions`).
3. COPY the contents into the staging table; then a fixed number of set-based statements,
   whatever the batch holds (no round per version):
   - upsert `call_records`, one row per record: a new record is inserted with its newest
     content; an existing one has its counters moved, and is locked for what follows;
   - look up which contents are earlier revisions (`record_revisions`, by content hash):
     those count as deliveries of that revision and change nothing else;
   - every other content becomes a new revision (numbered in order of its newest report);
     if it is newer than the content shown, it replaces the record's fields, and the
     newest of them is what `call_records` shows; a late one (older than the content
     shown) is kept in the history only.
4. Each new revision that `call_records` moved to gets an `outbox` row: the message.
5. Rejections go to `rejected_callbacks`; replays that now succeed resolve theirs."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
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
from workers.versions import Content, Delivery, RecordVersions, plan_versions

log = get_logger("cdrflow.worker.store")

Connection = asyncpg.Connection | PoolConnectionProxy


@dataclass(frozen=True, slots=True)
class BatchResult:
    published: list[OutboxEntry]  # new records and new revisions, to publish
    fresh: int  # deliveries not seen before (the rest were redelivered messages)
    versions: int  # distinct contents of records in the batch
    rejected: list[Rejection]


_CLAIM = """
INSERT INTO deliveries (ingest_id, item, record_id, received_at)
SELECT * FROM unnest($1::uuid[], $2::integer[], $3::uuid[], $4::timestamptz[])
ON CONFLICT DO NOTHING
RETURNING ingest_id, item
"""

# One row per record: its newest content, and the batch's counts.
_UPSERT = f"""
INSERT INTO call_records AS c (
    {", ".join(RECORD_COLUMNS)}, received_at, first_seen_at, last_seen_at, delivery_count,
    revision, content_hash, content_received_at, content_ingest_id, content_item)
SELECT {", ".join(f"s.{c}" for c in RECORD_COLUMNS)}, t.first_received_at,
    t.first_received_at, t.last_received_at, t.deliveries, s.ordinal + 1, s.content_hash,
    s.last_received_at, s.ingest_id, s.item
FROM {STAGE_TABLE} s JOIN (
    SELECT record_id, max(ordinal) AS newest, sum(deliveries)::integer AS deliveries,
        min(first_received_at) AS first_received_at, max(last_received_at) AS last_received_at
    FROM {STAGE_TABLE} GROUP BY record_id
) t ON s.record_id = t.record_id AND s.ordinal = t.newest
ORDER BY s.source, s.external_id  -- one lock order for all workers: no deadlocks between them
ON CONFLICT (source, external_id) DO UPDATE SET
    delivery_count = c.delivery_count + excluded.delivery_count,
    received_at = least(c.received_at, excluded.received_at),
    first_seen_at = least(c.first_seen_at, excluded.first_seen_at),
    last_seen_at = greatest(c.last_seen_at, excluded.last_seen_at)
RETURNING record_id, xmax = 0 AS created, revision, content_received_at, received_at,
    stored_at, first_seen_at, last_seen_at, delivery_count
"""  # noqa: S608 (identifiers are constants; values are parameters)

# For the contents of records stored before (and locked by the upsert): the revision each
# one already is, if any, and the record's last revision number.
_KNOWN = f"""
SELECT s.record_id, s.ordinal, r.revision AS known,
    (SELECT max(m.revision) FROM record_revisions m WHERE m.record_id = s.record_id) AS last
FROM {STAGE_TABLE} s
LEFT JOIN record_revisions r ON r.record_id = s.record_id AND r.content_hash = s.content_hash
WHERE s.record_id = ANY($1::uuid[])
"""  # noqa: S608

_STAGE_ONLY = (
    "ordinal",
    "deliveries",
    "first_received_at",
    "last_received_at",
    "ingest_id",
    "item",
    "content_hash",
    "raw",
)
_NEW_REVISIONS = f"""
INSERT INTO record_revisions (record_id, revision, content_hash, content, raw, ingest_id,
    item, received_at, first_seen_at, last_seen_at, delivery_count)
SELECT s.record_id, u.revision, s.content_hash,
    to_jsonb(s) - ARRAY[{", ".join(f"'{c}'" for c in _STAGE_ONLY)}], s.raw, s.ingest_id, s.item,
    s.first_received_at, s.first_received_at, s.last_received_at, s.deliveries
FROM {STAGE_TABLE} s
JOIN unnest($1::uuid[], $2::integer[], $3::integer[]) AS u(record_id, ordinal, revision)
    ON s.record_id = u.record_id AND s.ordinal = u.ordinal
"""  # noqa: S608

_EARLIER_DELIVERED = """
UPDATE record_revisions r SET
    delivery_count = r.delivery_count + u.deliveries,
    first_seen_at = least(r.first_seen_at, u.first_seen_at),
    last_seen_at = greatest(r.last_seen_at, u.last_seen_at)
FROM unnest($1::uuid[], $2::integer[], $3::integer[], $4::timestamptz[], $5::timestamptz[])
    AS u(record_id, revision, deliveries, first_seen_at, last_seen_at)
WHERE r.record_id = u.record_id AND r.revision = u.revision
"""

_SHOWN = f"""
UPDATE call_records c SET
    {", ".join(f"{column} = s.{column}" for column in CONTENT_COLUMNS)},
    revision = u.revision, content_hash = s.content_hash,
    content_received_at = s.last_received_at, content_ingest_id = s.ingest_id,
    content_item = s.item, updated_at = now()
FROM {STAGE_TABLE} s
JOIN unnest($1::uuid[], $2::integer[], $3::integer[]) AS u(record_id, ordinal, revision)
    ON s.record_id = u.record_id AND s.ordinal = u.ordinal
WHERE c.source = s.source AND c.external_id = s.external_id
"""  # noqa: S608

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
        records = plan_versions(fresh)
        published = await _store_versions(connection, records) if records else []
        if published:
            await _add_to_outbox(connection, published)
        rejections = _unique_rejections(normalized.rejections)
        if rejections:
            await connection.execute(_REJECT, *_rejection_columns(rejections))
        await _resolve_replays(connection, fresh, normalized)
    contents = sum(len(r.contents) for r in records)
    return BatchResult(published, len(fresh), contents, rejections)


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


def _stage_row(content: Content) -> tuple[Any, ...]:
    record = content.record
    columns = record.columns()
    columns["raw"] = dumps(record.raw).decode()
    columns["extra"] = dumps(record.extra).decode()
    columns["labels"] = list(record.labels)
    return (
        content.ordinal,
        content.deliveries,
        content.first_received_at,
        content.last_received_at,
        content.brought_by.ingest_id,
        content.brought_by.item,
        content.content_hash,
        *(_plain(columns[name]) for name in RECORD_COLUMNS),
    )


def _plain(value: Any) -> Any:
    # StrEnum members are str subclasses; hand the driver plain strings.
    return str(value) if isinstance(value, str) else value


@dataclass
class _Writes:
    """What a batch does to the history and the latest view, decided from what is stored."""

    new_revisions: list[tuple[uuid.UUID, int, int]] = field(default_factory=list)
    earlier: list[tuple[uuid.UUID, int, int, datetime, datetime]] = field(default_factory=list)
    shown: list[tuple[uuid.UUID, int, int]] = field(default_factory=list)
    published: list[OutboxEntry] = field(default_factory=list)

    def publish(self, content: Content, ledger: Ledger) -> None:
        record = content.record
        self.published.append(
            OutboxEntry(
                outbox_id=0,
                record_id=record.record_id,
                revision=ledger.revision,
                routing_key=routing_key(record),
                body=published_body(record, ledger),
            )
        )


async def _store_versions(
    connection: Connection, records: list[RecordVersions]
) -> list[OutboxEntry]:
    await connection.copy_records_to_table(
        STAGE_TABLE,
        records=[_stage_row(c) for r in records for c in r.contents],
        columns=STAGE_COLUMNS,
    )
    upserted = {row["record_id"]: row for row in await connection.fetch(_UPSERT)}
    stored_before = [rid for rid, row in upserted.items() if not row["created"]]
    known, last = await _known_revisions(connection, stored_before)
    writes = _Writes()
    for versions in records:
        row = upserted[versions.record_id]
        if row["created"]:
            _plan_new_record(versions, row, writes)
        else:
            _plan_stored_record(versions, row, known, last.get(versions.record_id), writes)
    await _apply(connection, writes)
    return writes.published


async def _known_revisions(
    connection: Connection, record_ids: list[uuid.UUID]
) -> tuple[dict[tuple[uuid.UUID, int], int], dict[uuid.UUID, int]]:
    """Which staged contents are revisions already, and each record's last revision."""
    if not record_ids:
        return {}, {}
    known: dict[tuple[uuid.UUID, int], int] = {}
    last: dict[uuid.UUID, int] = {}
    for row in await connection.fetch(_KNOWN, record_ids):
        if row["known"] is not None:
            known[(row["record_id"], row["ordinal"])] = row["known"]
        if row["last"] is not None:
            last[row["record_id"]] = row["last"]
    return known, last


def _ledger(row: asyncpg.Record, **changes: Any) -> Ledger:
    values = {
        name: row[name] for name in ("received_at", "stored_at", "first_seen_at", "last_seen_at")
    }
    values["delivery_count"] = row["delivery_count"]
    values["revision"] = row["revision"]
    return Ledger(**{**values, **changes})


def _plan_new_record(versions: RecordVersions, row: asyncpg.Record, writes: _Writes) -> None:
    """Every content is a revision, in order; the upsert showed the newest."""
    counted = 0
    for content in versions.contents:
        revision = content.ordinal + 1
        counted += content.deliveries
        writes.new_revisions.append((versions.record_id, content.ordinal, revision))
        if content is versions.contents[-1]:
            writes.publish(content, _ledger(row, revision=revision))
        else:
            as_then = {"delivery_count": counted, "last_seen_at": content.last_received_at}
            writes.publish(content, _ledger(row, revision=revision, **as_then))


def _plan_stored_record(
    versions: RecordVersions,
    row: asyncpg.Record,
    known: dict[tuple[uuid.UUID, int], int],
    last_revision: int | None,
    writes: _Writes,
) -> None:
    """An earlier content counts on its revision; a new one becomes the next revision, and
    the record's shown content when it is newer than the one shown."""
    record_id = versions.record_id
    last = max(last_revision or 0, row["revision"])
    counted = row["delivery_count"] - versions.deliveries
    moved: list[tuple[Content, int, int]] = []
    for content in versions.contents:
        counted += content.deliveries
        revision = known.get((record_id, content.ordinal))
        if revision is not None:
            first, newest = content.first_received_at, content.last_received_at
            writes.earlier.append((record_id, revision, content.deliveries, first, newest))
            continue
        last += 1
        writes.new_revisions.append((record_id, content.ordinal, last))
        if content.last_received_at >= row["content_received_at"]:
            moved.append((content, last, counted))
    for content, revision, counted_then in moved[:-1]:
        as_then = {"delivery_count": counted_then, "last_seen_at": content.last_received_at}
        writes.publish(content, _ledger(row, revision=revision, **as_then))
    if moved:
        content, revision, _ = moved[-1]
        writes.shown.append((record_id, content.ordinal, revision))
        writes.publish(content, _ledger(row, revision=revision))


async def _apply(connection: Connection, writes: _Writes) -> None:
    if writes.new_revisions:
        await connection.execute(_NEW_REVISIONS, *_columns(writes.new_revisions))
    if writes.earlier:
        await connection.execute(_EARLIER_DELIVERED, *_columns(writes.earlier))
    if writes.shown:
        await connection.execute(_SHOWN, *_columns(writes.shown))


def _columns(rows: Sequence[tuple[Any, ...]]) -> list[list[Any]]:
    return [list(column) for column in zip(*rows, strict=True)]


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
