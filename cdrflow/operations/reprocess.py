"""`cdrflow reprocess`: derive a source's stored records again from the original request
of the revision each one shows, with today's providers and today's sources file.

Each original is made an envelope again and goes through the worker's own code: the
provider's parser and normalization (`workers.normalize`), then the ledger's transaction
(`workers.storage.transaction.write_batch`), in this process, not through the queue. The
envelope is marked `reprocess`: it claims and counts no delivery, and the revision it
makes is marked `reprocessed_at`. A record whose content hash comes out the same is not
written at all; one whose content changes becomes the next revision, shown and written
to the outbox, from which the workers' relay publishes it like any other revision.

Pages of `PAGE` records of the source, in record_id order (keyset: no offset, no long
snapshot), one short transaction each. The page's records are locked first, in the order
the workers' batches lock them (their keys in `call_keys`, `FOR UPDATE`, by record_id): a
push of the same call waits for the page, or the page for the push, and only one of them
writes the next revision. `--dry-run` reads without locking and writes nothing."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from cdrflow.progress import Progress
from schemas.envelope import BACKFILL, RawEnvelope
from schemas.providers import Provider
from schemas.sources import Source
from workers.batch import Delivery, Normalized
from workers.normalize import normalize_envelope
from workers.storage.database import create_pool
from workers.storage.originals import read_original
from workers.storage.transaction import Connection, write_batch

PAGE = 500

_WHERE = """
WHERE c.source = $1
  AND ($2::timestamptz IS NULL OR c.received_at >= $2)
  AND ($3::timestamptz IS NULL OR c.received_at < $3)
"""
_COUNT = f"SELECT count(*) FROM call_records c {_WHERE}"  # noqa: S608 (constants)
# The shown revision's original request: in the bundle call_records names while the record
# has one revision and no record_revisions row, else in its record_revisions row's.
_SELECT = """
SELECT c.record_id, c.source, c.external_id, c.origin, c.content_hash, c.content_ingest_id,
    c.content_item, c.content_received_at,
    o.items[coalesce(c.original_item, r.original_item)] AS original
FROM call_records c
LEFT JOIN record_revisions r
    ON c.bundle_id IS NULL AND r.record_id = c.record_id AND r.revision = c.revision
LEFT JOIN originals o ON o.bundle_id = coalesce(c.bundle_id, r.bundle_id)
"""
_PAGE = f"""{_SELECT}
{_WHERE} AND ($4::uuid IS NULL OR c.record_id > $4)
ORDER BY c.record_id
LIMIT {PAGE}
"""
# Locked first, read after: a statement that waited for a row's lock would see the row as
# the other transaction left it but the revision and original it joined as they were
# before, so the rows are read by a statement of their own once they are locked. What is
# locked is the records' keys (`call_keys`), in record_id order, as the workers' batches
# lock them before they touch a record.
_LOCK = f"""
SELECT k.record_id FROM call_keys k
WHERE k.record_id IN (
    SELECT c.record_id FROM call_records c
    {_WHERE} AND ($4::uuid IS NULL OR c.record_id > $4)
    ORDER BY c.record_id
    LIMIT {PAGE})
ORDER BY k.record_id
FOR UPDATE
"""  # noqa: S608
_LOCKED = f"""{_SELECT}
WHERE c.record_id = ANY($1::uuid[])
ORDER BY c.record_id
"""


class ReprocessError(Exception):
    """The source cannot be reprocessed (not in today's sources file)."""


@dataclass(frozen=True, slots=True)
class ReprocessSelection:
    source: str
    since: datetime | None = None  # the record's `received_at`: its first delivery
    until: datetime | None = None
    dry_run: bool = False


@dataclass
class ReprocessCounts:
    examined: int = 0
    changed: int = 0  # new revisions (or, with --dry-run, records that would change)
    unchanged: int = 0
    no_original: int = 0  # stored before schema 8, or their bundle dropped by retention
    backfills: int = 0  # found in the provider's books: a backfill never revises a record
    not_derived: int = 0  # the original no longer makes this record (rejected, another id)
    problems: list[str] = field(default_factory=list)  # the first few not_derived, why

    def as_fields(self) -> dict[str, int]:
        return {
            "changed": self.changed,
            "unchanged": self.unchanged,
            "no_original": self.no_original,
            "backfills": self.backfills,
            "not_derived": self.not_derived,
        }


async def reprocess(
    database_url: str,
    sources: Mapping[str, Source],
    providers: Mapping[str, Provider],
    selection: ReprocessSelection,
    progress: Progress | None = None,
) -> ReprocessCounts:
    if selection.source not in sources:
        raise ReprocessError(f"source {selection.source!r} is not in the sources file")
    counts = ReprocessCounts()
    window = (selection.source, selection.since, selection.until)
    pool = await create_pool(database_url, 1, name="cdrflow-reprocess")
    try:
        async with pool.acquire() as connection:
            if progress is not None:
                progress.expect(await connection.fetchval(_COUNT, *window))
            after: uuid.UUID | None = None
            while True:
                async with connection.transaction():
                    rows = await _page(connection, window, after, locked=not selection.dry_run)
                    if not rows:
                        break
                    changed = _derive(rows, sources, providers, counts)
                    if changed and not selection.dry_run:
                        await _store(connection, changed, counts)
                    elif changed:
                        counts.changed += len(changed)
                after = rows[-1]["record_id"]
                counts.examined += len(rows)
                if progress is not None:
                    progress.update(len(rows), **counts.as_fields())
    finally:
        await pool.close()
    return counts


async def _page(
    connection: Connection,
    window: tuple[str, datetime | None, datetime | None],
    after: uuid.UUID | None,
    *,
    locked: bool,
) -> list[asyncpg.Record]:
    if not locked:
        return list(await connection.fetch(_PAGE, *window, after))
    keys = [row["record_id"] for row in await connection.fetch(_LOCK, *window, after)]
    return list(await connection.fetch(_LOCKED, keys)) if keys else []


def _derive(
    rows: list[asyncpg.Record],
    sources: Mapping[str, Source],
    providers: Mapping[str, Provider],
    counts: ReprocessCounts,
) -> list[Delivery]:
    """The deliveries of the page's records whose content changes."""
    changed: list[Delivery] = []
    for row in rows:
        if row["original"] is None:
            counts.no_original += 1
        elif row["origin"] == BACKFILL:
            counts.backfills += 1
        else:
            delivery = _derived(row, sources, providers, counts)
            if delivery is None:
                counts.not_derived += 1
            elif delivery.content_hash == bytes(row["content_hash"]):
                counts.unchanged += 1
            else:
                changed.append(delivery)
    return changed


def _derived(
    row: asyncpg.Record,
    sources: Mapping[str, Source],
    providers: Mapping[str, Provider],
    counts: ReprocessCounts,
) -> Delivery | None:
    envelope = _envelope(row, sources)
    normalized = normalize_envelope(envelope, sources, providers)
    for delivery in normalized.deliveries:
        if delivery.item == row["content_item"]:
            if delivery.record.record_id == row["record_id"]:
                return delivery
            _problem(counts, row, f"now reads as id {delivery.record.external_id!r}")
            return None
    why = next((r.message for r in normalized.rejections), "no report at its item")
    _problem(counts, row, why)
    return None


def _envelope(row: asyncpg.Record, sources: Mapping[str, Source]) -> RawEnvelope:
    """The original request as the ingress enqueued it, with today's source settings.
    Received when the shown content last arrived: it replaces the content it was read
    from, never counts as late beside it."""
    header, body = read_original(bytes(row["original"]))
    source = sources[row["source"]]
    return RawEnvelope(
        ingest_id=row["content_ingest_id"],
        source=source.name,
        tenant=source.tenant,
        provider=source.provider,
        received_at=row["content_received_at"],
        method=header["method"],
        path=f"/v1/callbacks/{source.name}",
        query=header["query"],
        content_type=header["content_type"],
        body=body,
        reading=header.get("reading", 0),
        origin=row["origin"],
        reprocess=True,
    )


def _problem(counts: ReprocessCounts, row: asyncpg.Record, why: str) -> None:
    if len(counts.problems) < 10:
        counts.problems.append(f"{row['external_id']}: {why}")


async def _store(connection: Connection, changed: list[Delivery], counts: ReprocessCounts) -> None:
    result = await write_batch(connection, Normalized(deliveries=changed))
    counts.changed += len(result.published)
    # A content equal to an earlier revision of the record: that revision stays as it was
    # kept, and the record goes on showing the one it shows.
    counts.unchanged += len(changed) - len(result.published)


def summary(counts: ReprocessCounts, selection: ReprocessSelection) -> list[str]:
    verb = "would change" if selection.dry_run else "changed (a new revision each)"
    lines = [
        f"{selection.source}: {counts.examined} record(s) examined;"
        f" {counts.changed} {verb}; {counts.unchanged} unchanged",
    ]
    if counts.no_original:
        lines.append(f"{counts.no_original} skipped: no original bytes")
    if counts.backfills:
        lines.append(f"{counts.backfills} skipped: backfills (never revised)")
    if counts.not_derived:
        lines.append(f"{counts.not_derived} skipped: the original no longer makes the record")
        lines += [f"    {problem}" for problem in counts.problems]
    if selection.dry_run:
        lines.append("dry run: nothing written")
    return lines
