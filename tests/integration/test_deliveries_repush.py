"""Schema 16: a delivery is indexed by record only when no revision names it (`repush`),
on the real PostgreSQL: `cdrflow history` still lists every delivery of a record, a raw
message delivered twice still counts once, two transactions claiming the same delivery at
once leave one claim (the second is rolled back and tried again), and the step applied in
place to a database holding deliveries."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from cdrflow.operations.history import load_history
from schemas.envelope import BACKFILL
from schemas.providers import default_registry
from schemas.record import record_id_for
from schemas.sources import Sources
from tests.integration.test_records_partitions import schema_up_to
from tests.integration.test_retention import PREVIOUS_CLAIM
from tests.support.env import scratch_database
from tests.support.samples import envelope, sample
from workers.batch import BatchResult, Normalized
from workers.normalize import normalize_envelope
from workers.storage import deliveries_repush, transaction
from workers.storage.database import ClaimedMeanwhile, DatabaseHold, create_pool, is_transient
from workers.storage.migrate import migrate
from workers.storage.partition_retention import ensure_ahead
from workers.storage.partitions import PARTITIONED
from workers.storage.transaction import write_batch
from workers.storage.writer import Store

REGISTRY = default_registry()
T0 = datetime(2026, 3, 1, tzinfo=UTC)


def batch(sources: Sources, *envelopes: object) -> Normalized:
    normalized = Normalized()
    for item in envelopes:
        normalized.extend(normalize_envelope(item, sources, REGISTRY))  # type: ignore[arg-type]
    assert not normalized.rejections
    return normalized


async def store(pool: asyncpg.Pool, sources: Sources, *envelopes: object) -> BatchResult:
    async with pool.acquire() as connection:
        return await write_batch(connection, batch(sources, *envelopes))


@pytest.fixture
async def pool(database_url: str, db: asyncpg.Connection) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, 2)
    try:
        yield pool
    finally:
        await pool.close()


async def deliveries_of(db: asyncpg.Connection, external_id: str) -> list[tuple[object, ...]]:
    rows = await db.fetch(
        "SELECT ingest_id, item, received_at, repush FROM deliveries WHERE record_id = $1"
        " ORDER BY received_at, ingest_id, item",
        record_id_for("nx-dr", external_id),
    )
    return [tuple(row) for row in rows]


async def test_history_lists_first_deliveries_and_re_pushes_of_every_revision(
    pool: asyncpg.Pool, db: asyncpg.Connection, sources: Sources
) -> None:
    one, two, three = (sample("nx-dr", "disputed", n) for n in range(3))
    at = [T0 + timedelta(minutes=m) for m in range(10)]
    # A record kept in call_records alone (one revision, one delivery).
    await store(pool, sources, envelope(sample("nx-dr", "alone"), at[0]))
    # A new record with two contents in one batch: two revisions, both named.
    await store(pool, sources, envelope(one, at[1]), envelope(two, at[2]), envelope(one, at[3]))
    first = envelope(three, at[4])
    await store(pool, sources, first)  # a third revision
    await store(pool, sources, envelope(two, at[5]))  # re-push of revision 2
    late = envelope(sample("nx-dr", "disputed", 3), T0 - timedelta(hours=1))
    await store(pool, sources, late, envelope(one, at[6]))  # late content: not shown
    redelivered = await store(pool, sources, first)  # the same raw message again
    assert redelivered.fresh == 0

    rows = await deliveries_of(db, "disputed")
    assert len(rows) == 7
    # The first delivery of each of the four revisions is named by it: not indexed.
    assert [r[3] for r in rows] == [None, None, None, True, None, True, True]
    assert rows[0][2] == T0 - timedelta(hours=1)
    alone = await deliveries_of(db, "alone")
    assert [r[3] for r in alone] == [None]

    for external_id, expected in (("disputed", rows), ("alone", alone)):
        history = await load_history(db, record_id_for("nx-dr", external_id))
        assert history is not None
        assert [(d.ingest_id, d.item, d.received_at) for d in history.deliveries] == [
            r[:3] for r in expected
        ]
    history = await load_history(db, record_id_for("nx-dr", "disputed"))
    assert history is not None
    assert sum(r.delivery_count for r in history.revisions) == 7
    assert await db.fetchval("SELECT count(*) FROM deliveries") == 8


async def test_a_backfill_that_changes_nothing_is_not_claimed(
    pool: asyncpg.Pool, db: asyncpg.Connection, sources: Sources
) -> None:
    pushed = envelope(sample("nx-cc", "booked"), T0)
    await store(pool, sources, pushed)
    backfill = dataclasses.replace(
        envelope(sample("nx-cc", "booked"), T0 + timedelta(minutes=1)), origin=BACKFILL
    )
    result = await store(pool, sources, backfill)
    assert result.ignored_backfills == 1
    assert await db.fetchval("SELECT count(*) FROM deliveries") == 1
    assert await db.fetchval("SELECT delivery_count FROM call_records") == 1


async def _blocked(db: asyncpg.Connection, pid: int) -> bool:
    waiting = await db.fetchval(
        "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid
    )
    return bool(waiting)


async def race(
    pool: asyncpg.Pool,
    db: asyncpg.Connection,
    sources: Sources,
    pid: int,
    second: Callable[[Normalized], Coroutine[Any, Any, BatchResult]],
) -> BatchResult:
    """The same raw message stored by two transactions at once: the first stores it and
    holds its commit until the second (`second`, on the server process `pid`), which did
    not see its claim, waits on its record's key."""
    message = envelope(sample("nx-cc", "raced"), T0)
    normalized = batch(sources, message)
    async with pool.acquire() as first:
        held = first.transaction()
        await held.start()
        await write_batch(first, normalized)  # a savepoint of `held`: not committed yet
        task = asyncio.create_task(second(normalized))
        for _ in range(250):
            if await _blocked(db, pid):
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the second transaction never waited for the first")
        await held.commit()
        result = await task
    assert await db.fetchval("SELECT count(*) FROM deliveries") == 1
    assert await db.fetchval("SELECT delivery_count FROM call_records") == 1
    assert await db.fetchval("SELECT count(*) FROM record_revisions") == 0
    return result


async def test_a_delivery_claimed_meanwhile_rolls_the_batch_back_and_tries_again(
    pool: asyncpg.Pool, db: asyncpg.Connection, sources: Sources, log_output: io.StringIO
) -> None:
    async with pool.acquire() as other:
        result = await race(
            pool,
            db,
            sources,
            other.get_server_pid(),
            lambda normalized: write_batch(other, normalized),
        )
    assert (result.fresh, result.published) == (0, [])
    events = [json.loads(line) for line in log_output.getvalue().splitlines()]
    races = [e for e in events if e["event"] == "deliveries_claimed_meanwhile"]
    assert [(e["count"], e["tries"]) for e in races] == [(1, 1)]
    assert any(e["event"] == "deliveries_seen_before" for e in events)


async def test_a_batch_still_claimed_meanwhile_is_held_and_retried_by_the_store(
    pool: asyncpg.Pool,
    database_url: str,
    db: asyncpg.Connection,
    sources: Sources,
    monkeypatch: pytest.MonkeyPatch,
    log_output: io.StringIO,
) -> None:
    """Past its tries at once, the race is a transient fault: the store holds the batch and
    tries it again (the batch is neither parked nor refused)."""
    assert is_transient(ClaimedMeanwhile(1))
    monkeypatch.setattr(transaction, "CLAIM_TRIES", 1)
    own = await create_pool(database_url, 1)  # one connection: the store's
    try:
        async with own.acquire() as connection:
            pid = connection.get_server_pid()
        store_ = Store(own, DatabaseHold(), retry_max_seconds=0.1)
        result = await race(pool, db, sources, pid, store_.write)
    finally:
        await own.close()
    assert (result.fresh, result.published, result.rejected) == (0, [], [])
    events = [json.loads(line) for line in log_output.getvalue().splitlines()]
    assert [e["tries"] for e in events if e["event"] == "deliveries_claimed_meanwhile"] == [1]
    assert any(e["event"] == "database_unavailable" for e in events)
    assert not any(e["event"] == "record_refused_by_database" for e in events)


async def test_step_16_in_place_keeps_every_delivery_found_by_record(sources: Sources) -> None:
    now = datetime.now(UTC)
    async with scratch_database("deliveries_repush") as url:
        with schema_up_to(deliveries_repush.STEP - 1):
            await migrate(url)
        connection = await asyncpg.connect(url)
        try:
            records = [uuid.uuid4() for _ in range(3)]
            old = [(uuid.uuid4(), records[n % 3]) for n in range(30)]
            for ingest_id, record_id in old:
                assert await connection.fetch(PREVIOUS_CLAIM, [ingest_id], [0], [record_id], [now])
            # An interrupted build leaves an invalid index: `prepare` makes it again.
            await deliveries_repush.prepare(connection)
            await connection.execute(
                "UPDATE pg_index SET indisvalid = false WHERE indexrelid = $1::regclass",
                deliveries_repush.partition_index("deliveries_default"),
            )
            assert deliveries_repush.STEP in await migrate(url)

            indexes = await connection.fetch(
                "SELECT indexrelid::regclass::text AS name, indisvalid,"
                " pg_get_indexdef(indexrelid) AS definition FROM pg_index"
                " WHERE indrelid = 'deliveries'::regclass"
            )
            assert {(i["name"], i["indisvalid"]) for i in indexes} == {
                ("deliveries_pkey", True),
                (deliveries_repush.INDEX, True),
            }
            # Every partition's index is attached, those made ahead after the step too.
            await ensure_ahead(connection, PARTITIONED["deliveries"], now + timedelta(days=20))
            unattached = await connection.fetchval(
                "SELECT count(*) FROM pg_inherits p WHERE p.inhparent = 'deliveries'::regclass"
                " AND NOT EXISTS (SELECT FROM pg_inherits i JOIN pg_index x"
                " ON x.indexrelid = i.inhrelid WHERE i.inhparent = $1::regclass"
                " AND x.indrelid = p.inhrelid AND x.indisvalid)",
                deliveries_repush.INDEX,
            )
            assert unattached == 0
            assert await connection.fetchval("SELECT bool_and(repush) FROM deliveries") is True
            # The previous release's claim: a new delivery, indexed; an old one recognized.
            fresh = uuid.uuid4()
            assert await connection.fetch(PREVIOUS_CLAIM, [fresh], [0], [records[0]], [now])
            assert not await connection.fetch(PREVIOUS_CLAIM, [old[0][0]], [0], [records[0]], [now])
            await connection.execute("SET enable_seqscan = off")
            for record_id in records:
                found = await connection.fetch(
                    "SELECT ingest_id FROM deliveries WHERE record_id = $1 AND repush", record_id
                )
                expected = {i for i, r in old if r == record_id} | (
                    {fresh} if record_id == records[0] else set()
                )
                assert {row["ingest_id"] for row in found} == expected
            plan = await connection.fetch(
                "EXPLAIN SELECT * FROM deliveries WHERE record_id = $1 AND repush", records[0]
            )
            assert "repush_idx" in "\n".join(row[0] for row in plan)
        finally:
            await connection.close()
