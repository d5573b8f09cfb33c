"""A call stored once is its one revision in `call_records` alone (schema 8): no
`record_revisions` row while its deliveries bring that content only (schema 14), whose
counts and times `call_records` holds. The first delivery of another content writes the
row from the record as it was, so that the history's counts and times are those every
delivery made."""

from __future__ import annotations

import asyncio
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
from workers.storage import transaction_sql as sql
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


async def test_a_call_stored_once_is_its_revision_through_re_pushes_of_its_content(
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

    bundle = await db.fetchval("SELECT bundle_id FROM call_records WHERE external_id = $1", ext)
    again = await store(pool, sources, request, T0 + timedelta(hours=1))
    assert again.published == []  # a delivery of revision 1
    # Earlier, so that first_seen_at moves too.
    await store(pool, sources, request, T0 - timedelta(minutes=5))
    assert await rows_of(db, ext) == 0  # still call_records alone
    (counted,) = await db.fetch(HISTORY, ext)
    assert (counted["revision"], counted["shown"], counted["delivery_count"]) == (1, True, 3)
    assert (counted["first_seen_at"], counted["last_seen_at"]) == (
        T0 - timedelta(minutes=5),
        T0 + timedelta(hours=1),
    )
    assert (counted["raw"], counted["body"]) == (only["raw"], only["body"])
    row = await one(db, "SELECT bundle_id FROM call_records WHERE external_id = $1", ext)
    assert row["bundle_id"] == bundle

    changed = sample("nx-voice", ext, variant=1)
    moved = await store(pool, sources, changed, T0 + timedelta(hours=2))
    assert [e.revision for e in moved.published] == [2]
    assert await rows_of(db, ext) == 2
    first, second = await db.fetch(HISTORY, ext)
    assert (first["shown"], first["delivery_count"], first["talk"]) == (
        False,
        3,
        only["talk"],
    )
    assert (first["first_seen_at"], first["last_seen_at"]) == (
        T0 - timedelta(minutes=5),
        T0 + timedelta(hours=1),
    )
    assert (first["raw"], first["body"]) == (only["raw"], only["body"])
    assert (second["shown"], second["delivery_count"]) == (True, 1)
    assert second["first_seen_at"] == second["last_seen_at"] == T0 + timedelta(hours=2)
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


async def test_a_re_push_of_the_first_content_after_a_second_counts_on_the_first(
    pool: asyncpg.Pool, sources: Sources, db: asyncpg.Connection
) -> None:
    request = sample("nx-voice")
    ext = request.external_id
    await store(pool, sources, request, T0)
    await store(pool, sources, sample("nx-voice", ext, variant=1), T0 + timedelta(minutes=30))
    back = await store(pool, sources, request, T0 + timedelta(hours=1))
    assert back.published == []  # a delivery of revision 1: the record stays on revision 2
    assert await rows_of(db, ext) == 2
    first, second = await db.fetch(HISTORY, ext)
    assert (first["revision"], first["shown"], first["delivery_count"]) == (1, False, 2)
    assert (first["first_seen_at"], first["last_seen_at"]) == (T0, T0 + timedelta(hours=1))
    assert (second["revision"], second["shown"], second["delivery_count"]) == (2, True, 1)
    assert second["last_seen_at"] == T0 + timedelta(minutes=30)
    record = await one(
        db,
        "SELECT delivery_count, revision, bundle_id, last_seen_at FROM call_records"
        " WHERE external_id = $1",
        ext,
    )
    assert (record["delivery_count"], record["revision"], record["bundle_id"]) == (3, 2, None)
    assert record["last_seen_at"] == T0 + timedelta(hours=1)


async def store_together(
    pool: asyncpg.Pool, sources: Sources, requests: list[tuple[Sample, datetime]]
) -> BatchResult:
    """One batch of several requests."""
    normalized = Normalized()
    for request, at in requests:
        normalized.extend(normalize_envelope(envelope(request, at), sources, default_registry()))
    async with pool.acquire() as connection:
        return await write_batch(connection, normalized)


async def test_one_batch_with_the_first_content_twice_keeps_it_alone(
    pool: asyncpg.Pool, sources: Sources, db: asyncpg.Connection
) -> None:
    request = sample("nx-voice")
    ext = request.external_id
    await store(pool, sources, request, T0)
    minute = timedelta(minutes=1)
    done = await store_together(pool, sources, [(request, T0 + minute), (request, T0 + 2 * minute)])
    assert done.published == []
    assert await rows_of(db, ext) == 0
    (only,) = await db.fetch(HISTORY, ext)
    assert (only["revision"], only["shown"], only["delivery_count"]) == (1, True, 3)
    assert (only["first_seen_at"], only["last_seen_at"]) == (T0, T0 + 2 * minute)


@pytest.mark.parametrize("first_newest", [True, False])
async def test_one_batch_with_the_first_content_and_another_writes_both_revisions(
    pool: asyncpg.Pool, sources: Sources, db: asyncpg.Connection, first_newest: bool
) -> None:
    """The batch's newest content may be the stored one while an older one differs: the
    record gets its second revision, and the first one's row counts both of its deliveries."""
    request = sample("nx-voice")
    ext = request.external_id
    await store(pool, sources, request, T0)
    changed = sample("nx-voice", ext, variant=1)
    early, late = T0 + timedelta(minutes=10), T0 + timedelta(minutes=20)
    batch = (
        [(changed, early), (request, late)] if first_newest else [(request, early), (changed, late)]
    )
    done = await store_together(pool, sources, batch)
    assert [e.revision for e in done.published] == [2]
    assert await rows_of(db, ext) == 2
    first, second = await db.fetch(HISTORY, ext)
    assert (first["revision"], first["delivery_count"], first["first_seen_at"]) == (1, 2, T0)
    assert first["last_seen_at"] == (late if first_newest else early)
    assert (second["revision"], second["shown"], second["delivery_count"]) == (2, True, 1)
    assert second["last_seen_at"] == (early if first_newest else late)
    assert loads(first["raw"]) == loads(request.body)
    assert loads(second["raw"]) == loads(changed.body)
    total = await db.fetchval("SELECT delivery_count FROM call_records WHERE external_id = $1", ext)
    assert total == 3


async def test_two_workers_at_once_count_every_delivery_on_its_revision(
    pool: asyncpg.Pool, sources: Sources, db: asyncpg.Connection, database_url: str
) -> None:
    """Re-pushes of the first content and a second content, stored by two pools at the
    same time: in whichever order the key's lock lets them in, the counts are exact."""
    other = await create_pool(database_url, 1)
    try:
        requests = [sample("nx-voice", f"both-{n}") for n in range(8)]
        for request in requests:
            await store(pool, sources, request, T0)
        later = T0 + timedelta(minutes=5)
        for request in requests:
            changed = sample("nx-voice", request.external_id, variant=1)
            await asyncio.gather(
                store(pool, sources, request, later),
                store(other, sources, changed, later),
                store(other, sources, request, later + timedelta(minutes=1)),
            )
    finally:
        await other.close()
    for request in requests:
        first, second = await db.fetch(HISTORY, request.external_id)
        assert (first["revision"], first["delivery_count"]) == (1, 3)
        assert (first["first_seen_at"], first["last_seen_at"]) == (T0, later + timedelta(minutes=1))
        assert (second["revision"], second["shown"], second["delivery_count"]) == (2, True, 1)
        assert loads(first["raw"]) == loads(request.body)


def _previous_release_upsert() -> str:
    """The upsert of the release before schema 14: it never sets `bundle_id`."""
    kept = [line for line in sql.UPSERT.splitlines() if "THEN c." not in line]
    text = "\n".join(kept).replace(
        "last_seen_at = greatest(c.last_seen_at, excluded.last_seen_at),",
        "last_seen_at = greatest(c.last_seen_at, excluded.last_seen_at)",
    )
    assert "bundle_id = CASE" not in text
    assert "alone" in text
    return text


async def test_a_writer_without_the_setting_writes_the_row_on_any_update(
    pool: asyncpg.Pool, sources: Sources, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The previous release's workers, running while schema 14 is applied, do not set
    `cdrflow.keeps_single_revision`: their first update of a record writes its revision's
    row, as before, and both releases' counts stay exact side by side."""
    request = sample("nx-voice")
    ext = request.external_id
    await store(pool, sources, request, T0)
    hour = timedelta(hours=1)
    with monkeypatch.context() as previous:
        previous.setattr(sql, "KEEPS_SINGLE_REVISION", "SELECT 1")
        previous.setattr(sql, "UPSERT", _previous_release_upsert())
        again = await store(pool, sources, request, T0 + hour)
    assert again.published == []
    assert await rows_of(db, ext) == 1
    (counted,) = await db.fetch(HISTORY, ext)
    assert (counted["revision"], counted["delivery_count"], counted["last_seen_at"]) == (
        1,
        2,
        T0 + hour,
    )
    # This release's workers go on from there.
    await store(pool, sources, request, T0 + 2 * hour)
    await store(pool, sources, sample("nx-voice", ext, variant=1), T0 + 3 * hour)
    first, second = await db.fetch(HISTORY, ext)
    assert (first["revision"], first["delivery_count"], first["last_seen_at"]) == (
        1,
        3,
        T0 + 2 * hour,
    )
    assert (second["revision"], second["shown"], second["delivery_count"]) == (2, True, 1)
    # A hand-written update, without the setting, writes the row as well.
    other = sample("nx-voice", "by-hand")
    await store(pool, sources, other, T0)
    await db.execute(
        "UPDATE call_records SET updated_at = now() WHERE external_id = $1", other.external_id
    )
    assert await rows_of(db, other.external_id) == 1
    (by_hand,) = await db.fetch(HISTORY, other.external_id)
    assert (by_hand["revision"], by_hand["delivery_count"]) == (1, 1)
