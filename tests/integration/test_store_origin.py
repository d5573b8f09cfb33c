"""Where a record came from, in the ledger, on the real PostgreSQL: a backfill (a report
`cdrflow reconcile` found in the provider's books) creates a record only when none is
stored, never revises one; a push always wins, in one batch, across batches, and across
two workers whose transactions meet on the record's row. A worker counts a backfill it
ignored as such, not as a duplicate delivery."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import pytest
from aio_pika.abc import AbstractChannel

from cdrflow.settings import Settings
from schemas.envelope import BACKFILL, RawEnvelope
from schemas.jsoncodec import loads
from schemas.providers import default_registry
from schemas.record import record_id_for
from schemas.sources import Sources
from tests.support.samples import envelope, sample
from tests.support.waiting import eventually, one
from tests.support.workers import publish_envelopes, running_worker
from workers.batch import BatchResult, Normalized
from workers.normalize import normalize_envelope
from workers.storage.database import create_pool
from workers.storage.transaction import write_batch

T0 = datetime.now(UTC).replace(microsecond=0)
REGISTRY = default_registry()


@pytest.fixture
async def pool(database_url: str, db: asyncpg.Connection) -> AsyncIterator[asyncpg.Pool]:
    made = await create_pool(database_url, 2, name="test-origin")
    try:
        yield made
    finally:
        await made.close()


def pushed(external_id: str, variant: int = 0, seconds: int = 0) -> RawEnvelope:
    return envelope(sample("nx-dr", external_id, variant), T0 + timedelta(seconds=seconds))


def backfilled(external_id: str, variant: int = 0, seconds: int = 0) -> RawEnvelope:
    return dataclasses.replace(pushed(external_id, variant, seconds), origin=BACKFILL)


def normalized(sources: Sources, *envelopes: RawEnvelope) -> Normalized:
    result = Normalized()
    for item in envelopes:
        result.extend(normalize_envelope(item, sources, REGISTRY))
    assert not result.rejections
    return result


async def store(pool: asyncpg.Pool, sources: Sources, *envelopes: RawEnvelope) -> BatchResult:
    async with pool.acquire() as connection:
        return await write_batch(connection, normalized(sources, *envelopes))


async def record(db: asyncpg.Connection, external_id: str) -> dict[str, Any]:
    row = await one(
        db,
        "SELECT origin, revision, delivery_count, talk_seconds, content_hash, last_seen_at,"
        " updated_at, first_seen_at FROM call_records WHERE source = 'nx-dr'"
        " AND external_id = $1",
        external_id,
    )
    return dict(row)


async def revisions(db: asyncpg.Connection, external_id: str) -> list[tuple[int, str, int]]:
    rows = await db.fetch(
        "SELECT revision, content->>'origin' AS origin, delivery_count FROM record_history"
        " WHERE record_id = $1 ORDER BY revision",
        record_id_for("nx-dr", external_id),
    )
    return [(r["revision"], r["origin"], r["delivery_count"]) for r in rows]


async def claimed(db: asyncpg.Connection, external_id: str) -> list[str]:
    """The origins of the record's deliveries in the ledger (`cdrflow history` lists them)."""
    rows = await db.fetch(
        "SELECT coalesce(r.content->>'origin', 'push') AS origin FROM deliveries d"
        " LEFT JOIN record_history r ON r.record_id = d.record_id AND r.ingest_id = d.ingest_id"
        " WHERE d.record_id = $1 ORDER BY d.received_at",
        record_id_for("nx-dr", external_id),
    )
    return [r["origin"] for r in rows]


async def messages(db: asyncpg.Connection, external_id: str) -> list[tuple[int, str]]:
    rows = await db.fetch(
        "SELECT revision, body FROM outbox WHERE record_id = $1 ORDER BY revision",
        record_id_for("nx-dr", external_id),
    )
    return [(r["revision"], loads(bytes(r["body"]))["origin"]) for r in rows]


async def test_a_backfill_creates_a_record_none_was_stored_for(
    pool: asyncpg.Pool, sources: Sources, db: asyncpg.Connection
) -> None:
    result = await store(pool, sources, backfilled("b-new"))
    assert (len(result.published), result.ignored_backfills) == (1, 0)
    stored = await record(db, "b-new")
    assert (stored["origin"], stored["revision"], stored["delivery_count"]) == ("backfill", 1, 1)
    assert await revisions(db, "b-new") == [(1, "backfill", 1)]
    assert await messages(db, "b-new") == [(1, "backfill")]


@pytest.mark.parametrize("first", ["push", "backfill"])
async def test_a_backfill_of_a_stored_record_changes_nothing(
    first: str, pool: asyncpg.Pool, sources: Sources, db: asyncpg.Connection
) -> None:
    make = pushed if first == "push" else backfilled
    await store(pool, sources, make("b-stored"))
    await db.execute("DELETE FROM outbox")  # as if published
    before = await record(db, "b-stored")
    # Other content and a later time: a push like it would be revision 2.
    result = await store(pool, sources, backfilled("b-stored", variant=3, seconds=60))
    assert (result.published, result.fresh, result.ignored_backfills) == ([], 1, 1)
    assert await record(db, "b-stored") == before
    assert await revisions(db, "b-stored") == [(1, first, 1)]
    assert await messages(db, "b-stored") == []
    assert await claimed(db, "b-stored") == [first]  # the backfill is no delivery


async def test_in_one_batch_the_push_of_a_new_record_wins_over_its_backfills(
    pool: asyncpg.Pool, sources: Sources, db: asyncpg.Connection
) -> None:
    batch = [backfilled("b-batch", 1, 0), pushed("b-batch", 0, 5), backfilled("b-batch", 2, 9)]
    result = await store(pool, sources, *batch)
    assert (result.fresh, result.ignored_backfills, len(result.published)) == (3, 2, 1)
    stored = await record(db, "b-batch")
    assert (stored["origin"], stored["revision"], stored["delivery_count"]) == ("push", 1, 1)
    assert stored["talk_seconds"] == 10  # the push's content (variant 0)
    assert await revisions(db, "b-batch") == [(1, "push", 1)]
    assert await messages(db, "b-batch") == [(1, "push")]
    assert await claimed(db, "b-batch") == ["push"]


@pytest.mark.parametrize("push_seconds", [60, -60], ids=["push-later", "push-received-earlier"])
async def test_a_push_for_a_backfilled_record_is_its_next_revision_even_with_equal_fields(
    push_seconds: int, pool: asyncpg.Pool, sources: Sources, db: asyncpg.Connection
) -> None:
    await store(pool, sources, backfilled("b-late"))
    backfill_hash = (await record(db, "b-late"))["content_hash"]
    # The same fields as the backfill; received before it or after, pushed content wins.
    result = await store(pool, sources, pushed("b-late", seconds=push_seconds))
    assert [e.revision for e in result.published] == [2]
    stored = await record(db, "b-late")
    assert (stored["origin"], stored["revision"], stored["delivery_count"]) == ("push", 2, 2)
    assert stored["content_hash"] != backfill_hash
    assert await revisions(db, "b-late") == [(1, "backfill", 1), (2, "push", 1)]
    assert await messages(db, "b-late") == [(1, "backfill"), (2, "push")]
    # The same push again is a delivery of revision 2; a backfill now changes nothing.
    again = await store(pool, sources, pushed("b-late", seconds=120))
    late_backfill = await store(pool, sources, backfilled("b-late", seconds=180))
    assert (again.published, late_backfill.ignored_backfills) == ([], 1)
    assert await revisions(db, "b-late") == [(1, "backfill", 1), (2, "push", 2)]
    assert sorted(await claimed(db, "b-late")) == ["backfill", "push", "push"]


async def _waits_on_a_lock(db: asyncpg.Connection, application: str) -> bool:
    waiting = await db.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"
        " AND wait_event_type = 'Lock'",
        application,
    )
    return bool(waiting)


@pytest.mark.parametrize("first", ["push", "backfill"])
async def test_two_workers_meet_on_the_records_row_and_the_push_wins(
    first: str, database_url: str, sources: Sources, db: asyncpg.Connection
) -> None:
    """One worker's transaction has stored its report and not committed; the other's waits
    on the row, then decides from what the first committed."""
    holder = await create_pool(database_url, 1, name="test-origin-holder")
    waiter = await create_pool(database_url, 1, name="test-origin-waiter")
    push, backfill = pushed("b-race", seconds=60), backfilled("b-race")
    held, waiting = (push, backfill) if first == "push" else (backfill, push)
    try:
        async with holder.acquire() as connection:
            transaction = connection.transaction()
            await transaction.start()
            await write_batch(connection, normalized(sources, held))
            later = asyncio.create_task(_store_one(waiter, sources, waiting))
            assert await eventually(lambda: _waits_on_a_lock(db, "test-origin-waiter"))
            assert not later.done()
            await transaction.commit()
        result = await later
    finally:
        await holder.close()
        await waiter.close()
    stored = await record(db, "b-race")
    assert stored["origin"] == "push"
    if first == "push":
        assert (result.ignored_backfills, result.published) == (1, [])
        assert await revisions(db, "b-race") == [(1, "push", 1)]
    else:
        assert [e.revision for e in result.published] == [2]
        assert await revisions(db, "b-race") == [(1, "backfill", 1), (2, "push", 1)]


async def _store_one(pool: asyncpg.Pool, sources: Sources, item: RawEnvelope) -> BatchResult:
    return await store(pool, sources, item)


async def test_pushes_and_backfills_of_the_same_records_at_once(
    pool: asyncpg.Pool, sources: Sources, db: asyncpg.Connection
) -> None:
    """Two batches at the same moment, one pushing what the other backfills: whichever takes
    a record's row first, every record ends pushed, and each backfill either created a
    record the push then revised, or changed nothing."""
    ids = [f"b-once-{n}" for n in range(40)]
    pushes = [pushed(ext, seconds=60) for ext in ids]
    backfills = [backfilled(ext) for ext in ids]
    push_result, backfill_result = await asyncio.gather(
        store(pool, sources, *pushes), store(pool, sources, *backfills)
    )
    assert len(push_result.published) == len(ids)
    assert all(e.revision in (1, 2) for e in push_result.published)
    rows = await db.fetch(
        "SELECT c.external_id, c.origin, c.revision, c.delivery_count,"
        " array_agg(coalesce(r.content->>'origin', 'push') ORDER BY r.revision) AS history"
        " FROM call_records c JOIN record_history r USING (record_id)"
        " GROUP BY c.external_id, c.origin, c.revision, c.delivery_count"
    )
    assert sorted(r["external_id"] for r in rows) == sorted(ids)
    assert {r["origin"] for r in rows} == {"push"}
    created_by_backfill = {r["external_id"] for r in rows if r["revision"] == 2}
    assert all(
        r["history"] == ["backfill", "push"]
        for r in rows
        if r["external_id"] in created_by_backfill
    )
    assert all(r["history"] == ["push"] for r in rows if r["revision"] == 1)
    assert backfill_result.ignored_backfills == len(ids) - len(created_by_backfill)
    assert len(backfill_result.published) == len(created_by_backfill)


async def test_a_push_that_began_before_the_backfill_storing_its_record_is_in_the_history(
    pool: asyncpg.Pool, sources: Sources, db: asyncpg.Connection
) -> None:
    """The push's transaction began (its `now()`) before the backfill's, which stored the
    record first: the push's revision, and its original bytes, are stored at the record's
    time, not before it, where every reader of the history bounds them."""
    async with pool.acquire() as connection, connection.transaction():
        began = await connection.fetchval("SELECT now()")
        await asyncio.sleep(0.05)
        await store(pool, sources, backfilled("b-late"))
        result = await write_batch(connection, normalized(sources, pushed("b-late", seconds=60)))
    assert [e.revision for e in result.published] == [2]
    assert await revisions(db, "b-late") == [(1, "backfill", 1), (2, "push", 1)]
    rows = await db.fetch(
        "SELECT h.revision, h.stored_at, h.raw IS NOT NULL AS has_raw FROM record_history h"
        " WHERE h.record_id = $1 ORDER BY h.revision",
        record_id_for("nx-dr", "b-late"),
    )
    assert [(r["revision"], r["has_raw"]) for r in rows] == [(1, True), (2, True)]
    assert rows[1]["stored_at"] >= rows[0]["stored_at"] > began


async def test_a_worker_counts_an_ignored_backfill_apart_from_duplicates(
    settings: Settings, sources: Sources, channel: AbstractChannel, db: asyncpg.Connection
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with (
        running_worker(settings.with_(worker_port=port), sources),
        aiohttp.ClientSession() as http,
    ):
        await publish_envelopes(channel, settings, [pushed("b-worker")])
        assert await eventually(lambda: _stored(db, 1))
        await publish_envelopes(channel, settings, [backfilled("b-worker", seconds=60)])
        text = ""

        async def counted() -> bool:
            nonlocal text
            async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
                text = await response.text()
            return 'cdrflow_worker_deliveries_total{outcome="backfill_ignored"} 1.0' in text

        assert await eventually(counted), text
    assert 'cdrflow_worker_deliveries_total{outcome="new_record"} 1.0' in text
    assert 'cdrflow_worker_deliveries_total{outcome="duplicate"} 0.0' in text
    stored = await record(db, "b-worker")
    assert (stored["origin"], stored["revision"], stored["delivery_count"]) == ("push", 1, 1)


async def _stored(db: asyncpg.Connection, count: int) -> bool:
    return bool(await db.fetchval("SELECT count(*) FROM call_records") == count)
