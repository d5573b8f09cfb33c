"""The data step of schema 8 (`cdrflow migrate`): revisions stored before it keep their
parsed payload as jsonb (`record_revisions.raw`, 0.65 KB for a call-center report) and the
shown one its content (`record_revisions.content`, 1.1 KB) although call_records holds it.
This moves each payload into `originals` and drops the shown content where call_records'
columns say the same, in batches of `BATCH_RECORDS` records, each a transaction of
its own that locks only its records' rows, in the order the workers lock them (so that
no worker moves a record to another revision while its batch runs).

`call_records.raw` of the records stored before stays as it is: dropping it would write
every row of the largest table again, for space that only a VACUUM FULL or a dump and
restore give back; the views read the payload from `originals` or `record_revisions`.

Workers of the previous release may run meanwhile: a row they write after its batch keeps
its payload in the old columns, which the views read first. The step's place is kept in
`cdrflow_data_steps`, so an interrupted run goes on from there; a value is dropped only when
what replaces it is equal (or, for `raw`, read in the same transaction), so a batch done
twice changes nothing."""

from __future__ import annotations

import sys
import time

import asyncpg

from cdrflow.logs import get_logger
from workers.storage.originals import BUNDLE_ITEMS
from workers.storage.originals import INSERT as INSERT_BUNDLES

log = get_logger("cdrflow.migrate")

VERSION = 8
BATCH_RECORDS = 2_000

_FIRST = """
SELECT source, external_id, record_id FROM call_records
ORDER BY source, external_id LIMIT $1 FOR UPDATE
"""
_NEXT = """
SELECT source, external_id, record_id FROM call_records
WHERE (source, external_id) > ($1, $2)
ORDER BY source, external_id LIMIT $3 FOR UPDATE
"""
_PAYLOADS = """
SELECT record_id, revision, raw::text AS raw FROM record_revisions
WHERE record_id = ANY($1::uuid[]) AND raw IS NOT NULL AND bundle_id IS NULL
ORDER BY record_id, revision
"""
# Each revision's raw moves to its place in `originals` (read in this transaction: nothing
# rewrites a revision's raw once written); the shown revision's content goes where
# call_records' columns say the same (a content kept by schema step 3 may lack a key added
# since: it stays).
_PLACE = """
UPDATE record_revisions r SET raw = NULL, bundle_id = u.bundle_id, payload_item = u.item,
    content = CASE WHEN r.revision = c.revision AND r.content = record_content(c) THEN NULL
        ELSE r.content END
FROM unnest($1::uuid[], $2::integer[], $3::bigint[], $4::smallint[])
    AS u(record_id, revision, bundle_id, item)
JOIN call_records c ON c.record_id = u.record_id
WHERE r.record_id = u.record_id AND r.revision = u.revision
"""
_PLACE_KEPT = """
INSERT INTO cdrflow_data_steps (version, after_source, after_external, moved, finished_at)
VALUES ($1, $2, $3, $4, CASE WHEN $5 THEN now() END)
ON CONFLICT (version) DO UPDATE SET after_source = excluded.after_source,
    after_external = excluded.after_external,
    moved = cdrflow_data_steps.moved + excluded.moved, finished_at = excluded.finished_at
"""


async def move_payloads(
    connection: asyncpg.Connection, *, batch: int = BATCH_RECORDS, max_batches: int | None = None
) -> bool:
    """Run (or go on with) the step; True once every record stored before is done."""
    place = await connection.fetchrow(
        "SELECT after_source, after_external, moved, finished_at FROM cdrflow_data_steps"
        " WHERE version = $1",
        VERSION,
    )
    if place is not None and place["finished_at"] is not None:
        return True
    after = (place["after_source"], place["after_external"]) if place else None
    done = place["moved"] if place else 0
    # Statistics first (autovacuum may be off, or not have come by): without them the
    # planner may read the whole table for each batch's few thousand rows. They also give
    # the progress its total, where a count would read the whole table.
    await connection.execute("ANALYZE call_records, record_revisions")
    total = int(
        await connection.fetchval(
            "SELECT greatest(reltuples, 0)::bigint FROM pg_class"
            " WHERE oid = 'call_records'::regclass"
        )
    )
    started = time.monotonic()
    batches = 0
    while max_batches is None or batches < max_batches:
        after, count, finished = await _one_batch(connection, after, batch)
        batches += 1
        done += count
        _progress(done, total, started)
        if finished:
            log.info("data_step_finished", version=VERSION, records=done)
            return True
    return False


async def _one_batch(
    connection: asyncpg.Connection, after: tuple[str, str] | None, batch: int
) -> tuple[tuple[str, str] | None, int, bool]:
    async with connection.transaction():
        if after is None:
            rows = await connection.fetch(_FIRST, batch)
        else:
            rows = await connection.fetch(_NEXT, *after, batch)
        finished = len(rows) < batch
        ids = [row["record_id"] for row in rows]
        if ids:
            await _move(connection, ids)
            after = (rows[-1]["source"], rows[-1]["external_id"])
        await connection.execute(_PLACE_KEPT, VERSION, *(after or (None, None)), len(ids), finished)
    return after, len(ids), finished


async def _move(connection: asyncpg.Connection, ids: list[object]) -> None:
    payloads = await connection.fetch(_PAYLOADS, ids)
    if payloads:
        items = [row["raw"].encode() for row in payloads]
        numbers = [n // BUNDLE_ITEMS for n in range(len(items))]
        bundles = sorted(
            row["bundle_id"] for row in await connection.fetch(INSERT_BUNDLES, items, numbers)
        )
        await connection.execute(
            _PLACE,
            [row["record_id"] for row in payloads],
            [row["revision"] for row in payloads],
            [bundles[n // BUNDLE_ITEMS] for n in range(len(items))],
            [n % BUNDLE_ITEMS + 1 for n in range(len(items))],
        )


def _progress(done: int, total: int, started: float) -> None:
    log.info("data_step_progress", version=VERSION, records=done, of=total)
    if sys.stderr.isatty():
        share = min(done / total, 1.0) if total else 1.0
        rate = done / max(time.monotonic() - started, 1e-9)
        print(
            f"\rschema {VERSION}: {done:,} of {total:,} records ({share:.0%}, {rate:,.0f}/s)",
            end="",
            file=sys.stderr,
            flush=True,
        )
