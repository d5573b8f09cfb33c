"""Schema 8 in place: a database of 100,000 records stored as schema 7 stores them (the
parsed payload in `call_records.raw` and in every revision, every revision's content)
upgrades with `cdrflow migrate`, interrupted once, while a worker of the previous release
writes: no record lost, every revision the same through `record_history`, and a re-push of
an old call still a delivery of its revision."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from schemas.jsoncodec import dumps
from schemas.providers import default_registry
from schemas.record import RECORD_COLUMNS
from schemas.sources import Sources
from tests.support.env import scratch_database
from tests.support.migrations import apply_up_to
from tests.support.samples import envelope, sample
from tests.support.waiting import one
from workers.batch import Delivery, Normalized
from workers.normalize import normalize_envelope
from workers.storage.database import create_pool
from workers.storage.migrate import available, migrate
from workers.storage.payloads_migration import move_payloads
from workers.storage.transaction import write_batch
from workers.storage.transaction_sql import _content_object

RECORDS = 100_000
REAL = 200  # normalized from real requests: re-pushed after the upgrade
_LEDGER = (
    "received_at",
    "first_seen_at",
    "last_seen_at",
    "content_hash",
    "content_received_at",
    "content_ingest_id",
    "content_item",
)
# What `record_history` says of every revision, as one digest, and how many rows. (Its
# `raw` costs the decompression of a bundle a row: PAYLOADS reads each bundle once.)
HISTORY = """
SELECT count(*) AS revisions, md5(string_agg(concat_ws('|', record_id, revision, shown,
    content::text, encode(content_hash, 'hex'), ingest_id, item, received_at,
    stored_at, first_seen_at, last_seen_at, delivery_count), E'\\n'
    ORDER BY record_id, revision)) AS digest
FROM record_history
"""
HISTORY_BUT = HISTORY.replace("FROM record_history", "FROM record_history WHERE record_id <> $1")
# Every revision's parsed payload, wherever it is kept.
PAYLOADS = """
SELECT count(*) AS revisions, md5(string_agg(coalesce(r.raw, p.raw)::text, E'\\n'
    ORDER BY r.record_id, r.revision)) AS digest
FROM record_revisions r LEFT JOIN (
    SELECT o.bundle_id, i.n, convert_from(i.item, 'UTF8')::jsonb AS raw
    FROM originals o, unnest(o.items) WITH ORDINALITY AS i(item, n)
) p ON p.bundle_id = r.bundle_id AND p.n = r.payload_item
WHERE r.record_id <> $1
"""
PAYLOADS_BEFORE = """
SELECT count(*) AS revisions, md5(string_agg(r.raw::text, E'\\n'
    ORDER BY r.record_id, r.revision)) AS digest
FROM record_revisions r WHERE r.record_id <> $1
"""
SAMPLE = """
SELECT record_id, revision, raw::text FROM record_history
WHERE record_id <> $1 AND record_id IN (SELECT record_id FROM call_records
    ORDER BY source, external_id LIMIT 1000 OFFSET 9500)
ORDER BY record_id, revision
"""
SHOWN = "SELECT revision, shown, content, raw FROM record_history WHERE record_id = $1 AND shown"
# The previous release's statements for a new shown revision (ledger_sql as schema 7 had it).
PREVIOUS_NEW_REVISION = f"""
INSERT INTO record_revisions (record_id, revision, content_hash, content, raw, ingest_id,
    item, received_at, first_seen_at, last_seen_at, delivery_count)
SELECT c.record_id, c.revision + 1, '\\x01'::bytea,
    {_content_object("c")} || '{{"status": "failed"}}',
    (SELECT h.raw FROM record_history h WHERE h.record_id = c.record_id AND h.shown)
        || '{{"moved": 1}}',
    gen_random_uuid(), 0, now(), now(), now(), 1
FROM call_records c WHERE c.record_id = $1
"""
PREVIOUS_SHOWN = """
UPDATE call_records c SET status = 'failed', revision = r.revision, raw = r.raw,
    delivery_count = c.delivery_count + 1, content_hash = r.content_hash
FROM record_revisions r
WHERE c.record_id = $1 AND r.record_id = c.record_id AND r.revision = c.revision + 1
"""


@pytest.mark.timeout(180)  # 100,000 records written, migrated (steps 8 to 12) and compared
async def test_100000_records_upgrade_in_place_and_keep_every_revision(
    sources: Sources,
) -> None:
    deliveries = _real_deliveries(sources)
    async with scratch_database("payloads_migration") as url:
        await apply_up_to(url, 7)
        connection = await asyncpg.connect(url)
        try:
            await _store_as_schema_7(connection, deliveries)
            # The record the previous release will move on: in the data step's first batch.
            moved = await connection.fetchval(
                "SELECT record_id FROM call_records ORDER BY source, external_id LIMIT 1"
            )
            before = await one(connection, HISTORY_BUT, moved)
            payloads = await one(connection, PAYLOADS_BEFORE, moved)
            sample_before = await connection.fetch(SAMPLE, moved)
            assert before["revisions"] == RECORDS + (RECORDS - REAL) // 10 - 1
            shown_before = await one(connection, SHOWN, moved)

            # The SQL step, then the data step interrupted after 5 batches.
            step = next(m for m in available() if m.version == 8)
            async with connection.transaction():
                await connection.execute(step.sql)
                await connection.execute(
                    "INSERT INTO cdrflow_migrations VALUES ($1, $2)", step.version, step.name
                )
            assert not await move_payloads(connection, batch=2_000, max_batches=5)
            place = await one(connection, "SELECT * FROM cdrflow_data_steps")
            assert (place["moved"], place["finished_at"]) == (10_000, None)
            assert await one(connection, HISTORY_BUT, moved) == before
            assert await one(connection, PAYLOADS, moved) == payloads
            assert await connection.fetch(SAMPLE, moved) == sample_before  # moved, or not
            assert await connection.fetchval(
                "SELECT content IS NULL AND raw IS NULL FROM record_revisions WHERE record_id = $1",
                moved,
            )

            # A worker of the previous release moves that record to a new revision.
            async with connection.transaction():
                await connection.execute(PREVIOUS_NEW_REVISION, moved)
                await connection.execute(PREVIOUS_SHOWN, moved)

            # Goes on with the data step, from its place (and applies the later steps).
            later = [m.version for m in available() if m.version > step.version]
            assert await migrate(url) == later
            place = await one(connection, "SELECT * FROM cdrflow_data_steps")
            assert place["moved"] == RECORDS
            assert place["finished_at"] is not None

            assert await one(connection, HISTORY_BUT, moved) == before
            assert await one(connection, PAYLOADS, moved) == payloads
            assert await connection.fetch(SAMPLE, moved) == sample_before
            left = await one(
                connection,
                "SELECT revision, shown, content, raw FROM record_history"
                " WHERE record_id = $1 AND revision = $2",
                moved,
                shown_before["revision"],
            )
            # It kept its content and payload when call_records moved on.
            assert dict(left) == {**dict(shown_before), "shown": False}
            assert await connection.fetchval("SELECT count(*) FROM call_records") == RECORDS
            await _each_payload_is_stored_once(connection)
            await _re_pushes_are_deliveries(url, connection, deliveries)
        finally:
            await connection.close()


def _real_deliveries(sources: Sources) -> list[Delivery]:
    at = datetime.now(UTC) - timedelta(days=2)
    found = []
    for n in range(REAL):
        request = envelope(sample("nx-voice", f"real-{n}"), at + timedelta(seconds=n))
        (delivery,) = normalize_envelope(request, sources, default_registry()).deliveries
        found.append(delivery)
    return found


async def _store_as_schema_7(connection: asyncpg.Connection, deliveries: list[Delivery]) -> None:
    """REAL records as the previous release stored them, then as many copies as make
    RECORDS (each its own id, payload and talk time); a tenth of them with an earlier
    revision, and a hundredth with a content kept by schema step 3 (no `origin` key)."""
    names = [*RECORD_COLUMNS, *_LEDGER]
    rows = []
    for d in deliveries:
        columns = d.record.columns()
        columns["raw"] = dumps(d.record.raw).decode()
        columns["extra"] = dumps(d.record.extra).decode()
        columns["labels"] = list(d.record.labels)
        at = d.received_at
        ledger = (at, at, at, d.content_hash, at, d.ingest_id, d.item)
        rows.append((*(columns[c] for c in RECORD_COLUMNS), *ledger))
    await connection.copy_records_to_table("call_records", records=rows, columns=names)
    others = [c for c in names if c not in ("record_id", "external_id", "raw", "talk_seconds")]
    await connection.execute(
        f"""
        INSERT INTO call_records (record_id, external_id, raw, talk_seconds, revision,
            {", ".join(others)})
        SELECT md5('bulk' || n)::uuid, 'bulk-' || n, raw || jsonb_build_object('n', n),
            n % 600, CASE WHEN n % 10 = 0 THEN 2 ELSE 1 END, {", ".join(others)}
        FROM call_records, generate_series(1, $1) AS n
        WHERE external_id = 'real-0'
        """,
        RECORDS - REAL,
    )
    # Each revision's content is its record's columns as jsonb. A copy's columns are
    # real-0's but for three, so its content is real-0's with those three replaced: the same
    # value, built without a 41-pair object a row (most of the setup's time).
    content = f"""
        CASE WHEN c.external_id LIKE 'bulk-%'
            THEN (SELECT {_content_object("r")} FROM call_records r
                  WHERE r.external_id = 'real-0')
                || jsonb_build_object('record_id', c.record_id, 'external_id', c.external_id,
                    'talk_seconds', c.talk_seconds)
            ELSE {_content_object("c")} END
    """
    await connection.execute(
        f"""
        INSERT INTO record_revisions (record_id, revision, content_hash, content, raw,
            ingest_id, item, received_at, stored_at, first_seen_at, last_seen_at,
            delivery_count)
        SELECT c.record_id, c.revision, c.content_hash,
            CASE WHEN c.external_id LIKE '%00' THEN ({content}) - 'origin' ELSE {content} END,
            c.raw, c.content_ingest_id, c.content_item, c.content_received_at, c.stored_at,
            c.first_seen_at, c.last_seen_at, c.delivery_count
        FROM call_records c
        UNION ALL
        SELECT c.record_id, 1, '\\x00'::bytea,
            {content} || '{{"talk_seconds": 1}}', c.raw || '{{"first": true}}',
            gen_random_uuid(), 0, c.received_at, c.stored_at, c.received_at, c.received_at, 1
        FROM call_records c WHERE c.revision = 2
        """
    )


async def _each_payload_is_stored_once(connection: asyncpg.Connection) -> None:
    """Every revision's payload is in `originals` but what the previous release wrote after
    its record's batch; a shown content is kept only where call_records' columns differ.
    (`call_records.raw` stays as it was: the views do not read it.)"""
    assert (
        await connection.fetchval("SELECT count(*) FROM record_revisions WHERE raw IS NOT NULL")
        == 1
    )
    kept = await connection.fetchval(
        "SELECT count(*) FROM record_revisions r JOIN call_records c USING (record_id)"
        " WHERE r.revision = c.revision AND r.content IS NOT NULL"
    )
    from_step_3 = await connection.fetchval(
        "SELECT count(*) FROM call_records WHERE external_id LIKE '%00'"
    )
    assert kept == from_step_3 + 1  # and the previous release's new revision


async def _re_pushes_are_deliveries(
    url: str, connection: asyncpg.Connection, deliveries: list[Delivery]
) -> None:
    pool = await create_pool(url, 1)
    try:
        again = [
            Delivery(
                envelope(sample("nx-voice", d.record.external_id)),
                d.item,
                d.record,
                d.content_hash,
            )
            for d in deliveries
        ]
        async with pool.acquire() as worker:
            result = await write_batch(worker, Normalized(deliveries=again))
    finally:
        await pool.close()
    assert (result.fresh, result.published) == (REAL, [])
    counts = await connection.fetch(
        "SELECT c.delivery_count, c.revision, count(r.*) AS revisions FROM call_records c"
        " JOIN record_revisions r USING (record_id) WHERE c.external_id LIKE 'real-%'"
        " GROUP BY c.record_id, c.delivery_count, c.revision"
    )
    assert len(counts) == REAL
    assert {tuple(row) for row in counts} == {(2, 1, 1)}
