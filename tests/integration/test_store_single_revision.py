"""A call stored once is its one revision in `call_records` alone (schema 8): no
`record_revisions` row until a further delivery, which writes it from the row as it was,
so that the history's counts and times are those every delivery made."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from schemas.jsoncodec import loads
from schemas.providers import default_registry
from schemas.sources import Sources
from tests.support.samples import Sample, envelope, sample
from tests.support.waiting import one
from workers.batch import BatchResult, Normalized
from workers.normalize import normalize_envelope
from workers.storage.database import create_pool
from workers.storage.transaction import write_batch
from workers.storage.transaction_sql import _content_object

T0 = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)
HISTORY = """
SELECT revision, shown, content->>'talk_seconds' AS talk, delivery_count, received_at,
    first_seen_at, last_seen_at, raw, body
FROM record_history WHERE external_id = $1 ORDER BY revision
"""


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, 1)
    try:
        yield pool
    finally:
        await pool.close()


async def store(pool: asyncpg.Pool, sources: Sources, request: Sample, at: datetime) -> BatchResult:
    normalized = normalize_envelope(envelope(request, at), sources, default_registry())
    async with pool.acquire() as connection:
        return await write_batch(connection, Normalized(deliveries=normalized.deliveries))


async def rows_of(db: asyncpg.Connection, external_id: str) -> int:
    return int(
        await db.fetchval(
            "SELECT count(*) FROM record_revisions r JOIN call_records c USING (record_id)"
            " WHERE c.external_id = $1",
            external_id,
        )
    )


async def test_a_call_stored_once_is_its_revision_and_a_re_push_writes_its_row(
    pool: asyncpg.Pool, sources: Sources, db: asyncpg.Connection
) -> None:
    request = sample("nx-voice")
    ext = request.external_id
    await store(pool, sources, request, T0)
    assert await rows_of(db, ext) == 0
    (only,) = await db.fetch(HISTORY, ext)
    assert (only["revision"], only["shown"], only["delivery_count"]) == (1, True, 1)
    assert only["received_at"] == only["first_seen_at"] == only["last_seen_at"] == T0
    assert loads(only["raw"]) == loads(request.body)
    assert bytes(only["body"]) == request.body  # the request's bytes as received
    # The trigger's content of a revision (SQL) is the ledger's, key for key.
    same = f"SELECT record_content(c) = ({_content_object('c')}) FROM call_records c"
    assert await db.fetchval(same + " WHERE external_id = $1", ext)

    again = await store(pool, sources, request, T0 + timedelta(hours=1))
    assert again.published == []  # a delivery of revision 1
    assert await rows_of(db, ext) == 1
    (counted,) = await db.fetch(HISTORY, ext)
    assert (counted["revision"], counted["delivery_count"]) == (1, 2)
    assert (counted["first_seen_at"], counted["last_seen_at"]) == (T0, T0 + timedelta(hours=1))
    assert (counted["raw"], counted["body"]) == (only["raw"], only["body"])
    row = await one(db, "SELECT bundle_id FROM call_records WHERE external_id = $1", ext)
    assert row["bundle_id"] is None  # the revision's row names the bundle now

    changed = sample("nx-voice", ext, variant=1)
    moved = await store(pool, sources, changed, T0 + timedelta(hours=2))
    assert [e.revision for e in moved.published] == [2]
    first, second = await db.fetch(HISTORY, ext)
    assert (first["shown"], first["delivery_count"], first["talk"]) == (
        False,
        2,
        only["talk"],
    )
    assert (second["shown"], second["delivery_count"]) == (True, 1)
    assert second["talk"] != first["talk"]
    assert bytes(second["body"]) == changed.body


async def test_a_new_content_as_the_first_further_delivery_keeps_the_first_one_exact(
    pool: asyncpg.Pool, sources: Sources, db: asyncpg.Connection
) -> None:
    request = sample("nx-voice")
    ext = request.external_id
    await store(pool, sources, request, T0)
    later = T0 + timedelta(minutes=30)
    await store(pool, sources, sample("nx-voice", ext, variant=1), later)
    first, second = await db.fetch(HISTORY, ext)
    # Revision 1 as its one delivery left it, not as the record's counters are now.
    assert (first["revision"], first["shown"], first["delivery_count"]) == (1, False, 1)
    assert first["last_seen_at"] == T0
    assert loads(first["raw"]) == loads(request.body)
    assert (second["revision"], second["shown"], second["last_seen_at"]) == (2, True, later)
    record = await one(
        db, "SELECT delivery_count, revision FROM call_records WHERE external_id = $1", ext
    )
    assert (record["delivery_count"], record["revision"]) == (2, 2)
