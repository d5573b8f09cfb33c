"""Schema 11: the deliveries ledger has no index on `received_at`. What read deliveries by
received time (`cdrflow status`, the console's overview) bound the ingest id too, and count
exactly what was received within their window; the previous release keeps claiming
deliveries."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg

from cdrflow.operations.pipeline_status import (
    RATE_WINDOW_SECONDS,
    PipelineStatus,
    read_database,
)
from console.queries import overview
from schemas.providers import default_registry
from schemas.sources import Sources
from tests.integration.test_retention import PREVIOUS_CLAIM, uuid7_at
from tests.support.env import scratch_database
from tests.support.migrations import apply_up_to
from tests.support.samples import envelope, sample
from workers.normalize import normalize_envelope
from workers.storage.database import DatabaseHold, create_pool
from workers.storage.migrate import migrate
from workers.storage.writer import Store

_RECEIVED_AT_INDEXES = """
SELECT c.relname FROM pg_index x
JOIN pg_class c ON c.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid
JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = ANY(x.indkey)
WHERE (t.relname = 'deliveries' OR t.oid IN
        (SELECT inhrelid FROM pg_inherits WHERE inhparent = 'deliveries'::regclass))
  AND a.attname = 'received_at'
"""


async def test_the_upgrade_drops_the_index_of_every_partition_and_keeps_the_rows() -> None:
    async with scratch_database("deliveries_by_ingest_time") as url:
        await apply_up_to(url, 8)
        connection = await asyncpg.connect(url)
        try:
            now = datetime.now(UTC)
            ids = [uuid7_at(now - timedelta(hours=n)) for n in range(100)]
            await connection.execute(
                "INSERT INTO deliveries SELECT i, 0, gen_random_uuid(), $2"
                " FROM unnest($1::uuid[]) i",
                ids,
                now,
            )
            assert await connection.fetch(_RECEIVED_AT_INDEXES)

            assert 11 in await migrate(url)

            assert await connection.fetch(_RECEIVED_AT_INDEXES) == []
            assert await connection.fetchval("SELECT count(*) FROM deliveries") == len(ids)
            assert await migrate(url) == []
            # The previous release's claim: a delivery seen before is still seen, a new one
            # is claimed.
            assert (
                await connection.fetch(PREVIOUS_CLAIM, [ids[3]], [0], [uuid.uuid4()], [now]) == []
            )
            fresh = uuid7_at(datetime.now(UTC))
            claimed = await connection.fetch(PREVIOUS_CLAIM, [fresh], [0], [uuid.uuid4()], [now])
            assert len(claimed) == 1
        finally:
            await connection.close()


async def test_status_and_console_count_the_deliveries_received_within_their_window(
    database_url: str, db: asyncpg.Connection, sources: Sources
) -> None:
    now = datetime.now(UTC)
    # Each delivery as the ingress makes it: the ingest id just before the received time.
    received = [now - timedelta(minutes=m) for m in (0, 1, 59, 61, 60 * 24 * 3)]
    pool = await create_pool(database_url, 1)
    try:
        store = Store(pool, DatabaseHold(), retry_max_seconds=1)
        for moment in received:
            incoming = envelope(sample("nx-voice"), moment, uuid7_at(moment))
            await store.write(normalize_envelope(incoming, sources, default_registry()))
    finally:
        await pool.close()
    source = sample("nx-voice").source
    assert await db.fetchval("SELECT count(*) FROM deliveries") == len(received)

    status = PipelineStatus()
    await read_database(db, status, [source])
    (state,) = status.sources
    assert state.last_hour == 3  # 0, 1 and 59 minutes ago
    assert state.last_callback == received[0]
    assert status.stored_per_second == 2 / RATE_WINDOW_SECONDS  # within the last 5 minutes
    (seen,) = await overview(db, [source])
    assert sum(seen.last_hour.values()) == 3
