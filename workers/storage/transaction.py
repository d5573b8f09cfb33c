"""Storing a batch in one transaction, and the deduplication ledger.

1. Drop the batch's deliveries that `deliveries` holds already (a raw message delivered
   twice): a delivery counts once, however often it comes back.
2. Set aside the backfills a push of the batch or another backfill makes redundant, then
   group the fresh deliveries per record and per content (`workers.storage.revisions`). A backfill
   that changes nothing (set aside, or of a stored record) is no delivery: it is not claimed.
3. COPY the contents into the staging table; then a fixed number of set-based statements,
   whatever the batch holds (no round per version):
   - claim the records' keys in `call_keys`, in record_id order: a new key names this
     transaction's time as its record's `stored_at` (its partition); a known one is
     locked, so that the batch alone writes its records from then on;
   - upsert `call_records`, one row per record: a new record is inserted with its newest
     content; an existing one has its counters moved, and is locked for what follows;
     a backfill of an existing one changes nothing (it is locked, not returned). A record
     whose one revision is kept in `call_records` alone, delivered again with that
     content only, is done: its counters are the revision's. Brought another content, it
     gets its revision's `record_revisions` row here (migration 14's trigger);
   - look up which contents are earlier revisions (`record_revisions`, by content hash):
     those count as deliveries of that revision and change nothing else;
   - every other content becomes a new revision (numbered in order of its newest report),
     its original request and parsed payload stored in `originals` (`workers.storage.originals`);
     if it is newer than the content shown, it replaces the record's fields, and the
     newest of them is what `call_records` shows; a late one (older than the content
     shown) is kept in the history only. Pushed content always wins: a push for a record
     whose shown content is a backfill replaces it, whenever either was received.
4. Claim the deliveries in `deliveries`, each written once as it stays: `repush` NULL for
   the first delivery of a revision created here (the revision names it: `cdrflow
   history` finds it by primary key), true for the others (found by the index of
   re-pushes by record). A delivery that a concurrent transaction claimed and committed
   meanwhile (the same raw message, redelivered while its first worker still ran) was
   counted twice: the transaction is rolled back and the batch tried again
   (`ClaimedMeanwhile`), which then drops it at step 1.
5. Each new revision that `call_records` moved to gets an `outbox` row: the message.
6. Rejections go to `rejected_callbacks`; replays that now succeed resolve theirs.

The statements are in `workers.storage.transaction_sql`."""

from __future__ import annotations

import operator
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from cdrflow.logs import get_logger
from schemas.envelope import BACKFILL
from schemas.jsoncodec import dumps
from schemas.record import LEDGER_COLUMNS, RECORD_COLUMNS, Ledger, published_body, routing_key
from workers.batch import (
    WHOLE_REQUEST,
    BatchResult,
    Content,
    Delivery,
    Normalized,
    OutboxEntry,
    RecordVersions,
    Rejection,
    as_request,
)
from workers.sanitize import sanitize
from workers.storage import originals
from workers.storage import transaction_sql as sql
from workers.storage.database import STAGE_ONLY_COLUMNS, STAGE_TABLE, ClaimedMeanwhile
from workers.storage.revisions import plan_versions, set_aside_backfills

log = get_logger("cdrflow.worker.store")

Connection = asyncpg.Connection | PoolConnectionProxy


# Tries of a batch whose deliveries a concurrent transaction claimed meanwhile, at once
# (that transaction has committed: the next try drops them), before the store's own retry.
CLAIM_TRIES = 3


async def write_batch(connection: Connection, normalized: Normalized) -> BatchResult:
    """Store one batch in one transaction. Raises what the database raises, and
    `ClaimedMeanwhile` (transient) if concurrent transactions keep claiming its deliveries."""
    tries = 0
    while True:
        tries += 1
        try:
            return await _write_batch(connection, normalized)
        except ClaimedMeanwhile as race:
            log.info("deliveries_claimed_meanwhile", count=race.count, tries=tries)
            if tries >= CLAIM_TRIES:
                raise


async def _write_batch(connection: Connection, normalized: Normalized) -> BatchResult:
    async with connection.transaction():
        fresh = await _unseen(connection, normalized.deliveries)
        planned, ignored = set_aside_backfills(fresh)
        records = plan_versions(planned)
        published: list[OutboxEntry] = []
        first: set[tuple[uuid.UUID, int]] = set()
        if records:
            published, left_alone, first = await _store_versions(connection, records)
            if left_alone:
                ignored += [d for d in planned if d.record.record_id in left_alone]
        await _claim(connection, fresh, ignored, first)
        if published:
            await _add_to_outbox(connection, published)
        rejections = _unique_rejections(normalized.rejections)
        if rejections:
            await connection.execute(sql.REJECT, *_rejection_columns(rejections))
        await _resolve_replays(connection, fresh, normalized)
    if ignored:
        log.info("backfills_ignored", count=len(ignored))
    contents = sum(len(r.contents) for r in records)
    return BatchResult(published, len(fresh), contents, rejections, len(ignored))


async def _unseen(connection: Connection, deliveries: list[Delivery]) -> list[Delivery]:
    """The batch's deliveries that no committed transaction claimed, each once."""
    unique: dict[tuple[uuid.UUID, int], Delivery] = {}
    reread: list[Delivery] = []  # `cdrflow reprocess`: a stored request, no delivery
    for delivery in deliveries:
        if delivery.envelope.reprocess:
            reread.append(delivery)
        else:
            unique.setdefault((delivery.ingest_id, delivery.item), delivery)
    if not unique:
        return reread
    rows = await connection.fetch(
        sql.SEEN,
        list({ingest_id for ingest_id, _ in unique}),
        list({item for _, item in unique}),
    )
    seen = {key for row in rows if (key := (row["ingest_id"], row["item"])) in unique}
    if seen:
        log.info("deliveries_seen_before", count=len(seen))
    return [d for key, d in unique.items() if key not in seen] + reread


async def _claim(
    connection: Connection,
    fresh: list[Delivery],
    ignored: list[Delivery],
    first: set[tuple[uuid.UUID, int]],
) -> None:
    """Claim the batch's deliveries but the backfills that changed nothing, in (ingest_id,
    item) order (one order for every worker, so that two claims never wait on each other
    in a cycle); rolled back if one was claimed meanwhile."""
    skip = {(d.ingest_id, d.item) for d in ignored}
    claims = [d for d in fresh if not d.envelope.reprocess and (d.ingest_id, d.item) not in skip]
    if not claims:
        return
    # Ordered by the statement (sorting by UUID in Python costs about 1 µs a delivery), and
    # counted by its status ("INSERT 0 n"), not rows sent back.
    status = await connection.execute(
        sql.CLAIM,
        [d.ingest_id for d in claims],
        [d.item for d in claims],
        [d.record.record_id for d in claims],
        [d.received_at for d in claims],
        [None if (d.ingest_id, d.item) in first else True for d in claims],
    )
    inserted = int(status.rsplit(" ", 1)[1])
    if inserted < len(claims):
        raise ClaimedMeanwhile(len(claims) - inserted)


# The columns COPY writes, in the order `_stage_row` makes them: the record's values as it
# holds them (asyncpg takes a StrEnum member as the text it is), then the three it renders.
_RENDERED = ("raw", "extra", "labels")
_AS_HELD = tuple(c for c in RECORD_COLUMNS if c != "record_id" and c not in _RENDERED)
_COPY_COLUMNS = (*STAGE_ONLY_COLUMNS, "record_id", *_AS_HELD, *_RENDERED)
_held_values = operator.attrgetter(*_AS_HELD)  # one call reads them all


def _stage_row(content: Content, place: originals.Place) -> tuple[Any, ...]:
    record = content.record
    brought_by = content.brought_by
    return (
        content.ordinal,
        content.deliveries,
        content.first_received_at,
        content.last_received_at,
        brought_by.ingest_id,
        brought_by.item,
        brought_by.content_hash,
        place.bundle_id,
        place.original_item,
        place.payload_item,
        record.record_id,
        *_held_values(record),
        None,  # raw: in `originals`, with the request that brought it
        dumps(record.extra).decode(),
        record.labels,
    )


@dataclass
class _Writes:
    """What a batch does to the history and the latest view, decided from what is stored."""

    new_revisions: list[tuple[uuid.UUID, int, int]] = field(default_factory=list)
    # The contents whose original request and payload are stored: every new revision's.
    stored: list[Content] = field(default_factory=list)
    # The new revisions call_records shows after the batch: their content is its columns.
    shown_new: set[tuple[uuid.UUID, int]] = field(default_factory=set)
    earlier: list[tuple[uuid.UUID, int, int, datetime, datetime]] = field(default_factory=list)
    shown: list[tuple[uuid.UUID, int, int]] = field(default_factory=list)
    published: list[OutboxEntry] = field(default_factory=list)
    # Records whose new revisions `cdrflow reprocess` made (a reprocess batch is nothing else).
    reprocessed: set[uuid.UUID] = field(default_factory=set)

    def publish(self, content: Content, ledger: Ledger) -> None:
        record = content.record
        self.published.append(
            OutboxEntry(  # outbox_id 0 until the row is written
                0,
                record.record_id,
                ledger.revision,
                routing_key(record),
                published_body(record, ledger),
            )
        )


async def _store_versions(
    connection: Connection, records: list[RecordVersions]
) -> tuple[list[OutboxEntry], set[uuid.UUID], set[tuple[uuid.UUID, int]]]:
    """The entries to publish, the records a backfill found stored (left alone), and the
    deliveries that brought the new revisions (which the revisions name)."""
    contents = [c for r in records for c in r.contents]
    bundles = originals.Bundles([(c.brought_by.envelope, dumps(c.record.raw)) for c in contents])
    await bundles.reserve(connection)
    await connection.copy_records_to_table(
        STAGE_TABLE,
        records=[_stage_row(c, bundles.place(n)) for n, c in enumerate(contents)],
        columns=_COPY_COLUMNS,
    )
    new_keys = [row["record_id"] for row in await connection.fetch(sql.CLAIM_KEYS)]
    await connection.execute(sql.KEEPS_SINGLE_REVISION)
    upserted = {row["record_id"]: row for row in await connection.fetch(sql.UPSERT, new_keys)}
    stored_before = [rid for rid, row in upserted.items() if not (row["created"] or row["alone"])]
    known, last = await _known_revisions(connection, stored_before)
    writes = _Writes()
    left_alone: set[uuid.UUID] = set()
    for versions in records:
        row = upserted.get(versions.record_id)
        if row is None:  # a backfill, and the record is stored: the upsert left it alone
            left_alone.add(versions.record_id)
        elif row["created"]:
            _plan_new_record(versions, row, writes)
        elif row["alone"]:
            # Its one revision, delivered again: the upsert counted it in call_records.
            continue
        else:
            _plan_stored_record(versions, row, known, last.get(versions.record_id), writes)
    await _apply(connection, writes)
    index = {id(content): n for n, content in enumerate(contents)}
    latest = max((row["stored_at"] for row in upserted.values()), default=None)
    await bundles.write(connection, {index[id(content)] for content in writes.stored}, latest)
    first = {(c.brought_by.ingest_id, c.brought_by.item) for c in writes.stored}
    return writes.published, left_alone, first


async def _known_revisions(
    connection: Connection, record_ids: list[uuid.UUID]
) -> tuple[dict[tuple[uuid.UUID, int], int], dict[uuid.UUID, int]]:
    """Which staged contents are revisions already, and each record's last revision."""
    if not record_ids:
        return {}, {}
    known: dict[tuple[uuid.UUID, int], int] = {}
    last: dict[uuid.UUID, int] = {}
    for row in await connection.fetch(sql.KNOWN, record_ids):
        if row["known"] is not None:
            known[(row["record_id"], row["ordinal"])] = row["known"]
        if row["last"] is not None:
            last[row["record_id"]] = row["last"]
    return known, last


def _ledger(row: asyncpg.Record, **changes: Any) -> Ledger:
    # Positional, from the row's values: half the cost of building it by keyword.
    return Ledger(*(changes.get(name, row[name]) for name in LEDGER_COLUMNS))


def _plan_new_record(versions: RecordVersions, row: asyncpg.Record, writes: _Writes) -> None:
    """Every content is a revision, in order; the upsert showed the newest. A record with
    one content is its one revision: the upsert wrote all of it into call_records."""
    counted = 0
    for content in versions.contents:
        revision = content.ordinal + 1
        counted += content.deliveries
        writes.stored.append(content)
        if len(versions.contents) > 1:
            writes.new_revisions.append((versions.record_id, content.ordinal, revision))
        if content is versions.contents[-1]:
            writes.shown_new.add((versions.record_id, revision))
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
    # Only pushes come here (a backfill of a stored record is not returned by the upsert):
    # over a backfill, every new content is newer, whatever its receipt time says.
    over_backfill = row["origin"] == BACKFILL
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
        if content.brought_by.envelope.reprocess:
            writes.reprocessed.add(record_id)
        writes.stored.append(content)
        if over_backfill or content.last_received_at >= row["content_received_at"]:
            moved.append((content, last, counted))
    for content, revision, counted_then in moved[:-1]:
        as_then = {"delivery_count": counted_then, "last_seen_at": content.last_received_at}
        writes.publish(content, _ledger(row, revision=revision, **as_then))
    if moved:
        content, revision, _ = moved[-1]
        writes.shown.append((record_id, content.ordinal, revision))
        writes.shown_new.add((record_id, revision))
        writes.publish(content, _ledger(row, revision=revision))


async def _apply(connection: Connection, writes: _Writes) -> None:
    if writes.new_revisions:
        await connection.execute(
            sql.NEW_REVISIONS,
            *_columns(writes.new_revisions),
            [(rid, rev) not in writes.shown_new for rid, _, rev in writes.new_revisions],
            [rid in writes.reprocessed for rid, _, _ in writes.new_revisions],
        )
    if writes.earlier:
        await connection.execute(sql.EARLIER_DELIVERED, *_columns(writes.earlier))
    if writes.shown:
        await connection.execute(sql.SHOWN, *_columns(writes.shown))


def _columns(rows: Sequence[tuple[Any, ...]]) -> list[list[Any]]:
    return [list(column) for column in zip(*rows, strict=True)]


async def _add_to_outbox(connection: Connection, entries: list[OutboxEntry]) -> None:
    rows = await connection.fetch(
        sql.OUTBOX,
        [e.record_id for e in entries],
        [e.revision for e in entries],
        [e.routing_key for e in entries],
        [e.body for e in entries],
    )
    written = {(row["record_id"], row["revision"]): row for row in rows}
    for index, entry in enumerate(entries):
        row = written[(entry.record_id, entry.revision)]
        entries[index] = OutboxEntry(
            row["outbox_id"],
            entry.record_id,
            entry.revision,
            entry.routing_key,
            entry.body,
            row["slot"],
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
        await connection.execute(sql.RESOLVE, list(ids), list(items), list(records))
