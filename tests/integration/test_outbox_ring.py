"""The outbox keeps no dead rows: its partitions are truncated once drained, so after
100,000 records it holds at most one partition's worth, whether a vacuum ran or not (this
machine's PostgreSQL runs with autovacuum off). A committed row is never truncated before
it is published."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import pytest
from aio_pika.abc import AbstractChannel

from cdrflow.amqp import BrokerLink
from cdrflow.settings import Settings
from schemas.providers import default_registry
from schemas.sources import Sources
from tests.support.broker import record_tap
from tests.support.env import scratch_database
from tests.support.migrations import apply_up_to
from tests.support.samples import envelope, sample
from workers.batch import Normalized, OutboxEntry
from workers.normalize import normalize_envelope
from workers.outbox import PARTITIONS, RecordPublisher
from workers.storage import transaction_sql as ledger_sql
from workers.storage.database import STAGE_TABLE, DatabaseHold, create_pool
from workers.storage.migrate import migrate
from workers.storage.writer import Store

ROWS_PER_PARTITION = 5_000  # outbox_slot_of in workers/storage/migrations/0006_outbox_ring.sql
RECORDS = 100_000
BATCH = 1_000
REGISTRY = default_registry()
BODY = b'{"record":"%d",' + b'"x":"' + b"y" * 520 + b'"}'  # about a published record's size


@asynccontextmanager
async def publisher_of(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[RecordPublisher]:
    link = BrokerLink(settings.amqp_url, settings.topology(), name="test-outbox-ring")
    await link.start()
    try:
        yield RecordPublisher(
            link,
            pool,
            exchange=settings.records_exchange,
            confirm_timeout=30,
            grace_seconds=0,
            interval_seconds=1,
        )
    finally:
        await link.close()


async def outbox_bytes(db: asyncpg.Connection) -> int:
    sizes = [
        await db.fetchval("SELECT pg_total_relation_size($1::regclass)", p) for p in PARTITIONS
    ]
    return int(sum(sizes))


async def write_outbox_rows(pool: asyncpg.Pool, first: int, count: int) -> list[OutboxEntry]:
    """`count` outbox rows committed by the ledger's own statement, as a batch writes them."""
    async with pool.acquire() as connection, connection.transaction():
        rows = await connection.fetch(
            ledger_sql.OUTBOX,
            [uuid.uuid4() for _ in range(count)],
            [1] * count,
            ["acme.nx.voice.answered"] * count,
            [BODY % n for n in range(first, first + count)],
        )
    return [
        OutboxEntry(r["outbox_id"], r["record_id"], r["revision"], "a.b.c.d", b"", r["slot"])
        for r in rows
    ]


def move_writes_away_from(slot: int) -> str:
    """The statement that makes the next outbox rows go to another partition than `slot`."""
    other = (slot + 1) % len(PARTITIONS)
    return f"SELECT setval('outbox_slot_seq', {other * ROWS_PER_PARTITION + 1})"


@pytest.mark.timeout(300)
async def test_100000_records_leave_the_outbox_within_one_partition_of_its_live_rows(
    settings: Settings, db: asyncpg.Connection
) -> None:
    # What the same rows leave in a plain table, written and deleted as the outbox was
    # before it had partitions: every deleted row stays until a vacuum.
    await db.execute(
        "CREATE TEMP TABLE plain_outbox (LIKE outbox INCLUDING DEFAULTS INCLUDING INDEXES)"
    )
    await db.execute(
        "INSERT INTO plain_outbox (outbox_id, slot, record_id, revision, routing_key, body)"
        " SELECT n, 0, gen_random_uuid(), 1, 'acme.nx.voice.answered',"
        " convert_to('{\"record\":\"' || n || '\",\"x\":\"' || repeat('y', 520) || '\"}',"
        " 'UTF8') FROM generate_series(1, $1) n",
        RECORDS,
    )
    await db.execute("DELETE FROM plain_outbox")
    plain = int(await db.fetchval("SELECT pg_total_relation_size('plain_outbox')"))
    before = await outbox_bytes(db)

    pool = await create_pool(settings.database_url, 2)
    try:
        async with publisher_of(settings, pool) as publisher:
            for first in range(0, RECORDS, BATCH):
                entries = await write_outbox_rows(pool, first, BATCH)
                assert await publisher.publish(entries) == BATCH
                if first % (10 * BATCH) == 0:  # the relay rounds, now and then
                    await publisher.reclaim_drained()
            await publisher.reclaim_drained()  # rows were written since the previous round

            assert await db.fetchval("SELECT count(*) FROM outbox") == 0
            after = await outbox_bytes(db)
            # At most the partition being written keeps its deleted rows: 5% of what was
            # written.
            assert after - before <= plain * 2 * ROWS_PER_PARTITION / RECORDS, (
                before,
                after,
                plain,
            )
            written_to = await db.fetchval("SELECT outbox_slot_of(last_value) FROM outbox_slot_seq")
            for slot, partition in enumerate(PARTITIONS):
                pages = await db.fetchval("SELECT pg_relation_size($1::regclass)", partition)
                # The others truncated: no page of rows, their indexes' metapages only. The
                # one being written to is left to its writers.
                assert (pages > 0) == (slot == written_to), (slot, written_to, pages)

            # A round later, no row written meanwhile: the outbox is idle, and the partition
            # written to is truncated too.
            assert await publisher.reclaim_drained() == 1
            assert await outbox_bytes(db) <= before
            for partition in PARTITIONS:
                assert await db.fetchval("SELECT pg_relation_size($1::regclass)", partition) == 0
    finally:
        await pool.close()


async def test_a_committed_row_is_truncated_only_after_it_is_published(
    settings: Settings, sources: Sources, channel: AbstractChannel, db: asyncpg.Connection
) -> None:
    pool = await create_pool(settings.database_url, 2)
    try:
        normalized = normalize_envelope(envelope(sample("nx-voice")), sources, default_registry())
        # Committed, and the worker dies before it publishes.
        (entry,) = (
            await Store(pool, DatabaseHold(), retry_max_seconds=1).write(normalized)
        ).published
        await db.execute(move_writes_away_from(entry.slot))
        async with publisher_of(settings, pool) as publisher, record_tap(channel, settings) as tap:
            assert await publisher.reclaim_drained() == 0
            assert await db.fetchval("SELECT count(*) FROM outbox") == 1
            assert await publisher.relay_once() == 1
            await tap.wait_for(1)
            assert await publisher.reclaim_drained() == 1
        assert [m.message_id for m in tap.messages] == [entry.message_id]
        partition = PARTITIONS[entry.slot]
        assert await db.fetchval("SELECT pg_relation_size($1::regclass)", partition) == 0
    finally:
        await pool.close()


async def test_a_partition_written_by_an_open_transaction_is_left_alone(
    settings: Settings, db: asyncpg.Connection
) -> None:
    pool = await create_pool(settings.database_url, 2)
    writer = await asyncpg.connect(settings.database_url)
    try:
        transaction = writer.transaction()
        await transaction.start()
        slot = await writer.fetchval(
            "INSERT INTO outbox (record_id, revision, routing_key, body)"
            " VALUES (gen_random_uuid(), 1, 'a.b.c.d', '\\x7b7d') RETURNING slot"
        )
        await db.execute(move_writes_away_from(slot))
        async with publisher_of(settings, pool) as publisher:
            # The writer's lock: not truncated, and not waited for either.
            assert await publisher.reclaim_drained() == 0
            await transaction.commit()
            assert await publisher.reclaim_drained() == 0  # a row to publish
            assert await db.fetchval("SELECT count(*) FROM outbox") == 1
            assert await publisher.relay_once() == 1  # confirmed by the broker
            assert await publisher.reclaim_drained() == 1
    finally:
        await writer.close()
        await pool.close()


async def test_the_staging_table_keeps_no_row_page_after_a_batch(
    settings: Settings, sources: Sources, db: asyncpg.Connection
) -> None:
    # ON COMMIT DELETE ROWS empties it by truncation, not by deleting rows: no row page is
    # left, and what is (its free-space map, its TOAST index's metapage) does not grow.
    pool = await create_pool(settings.database_url, 1)  # one connection: one staging table
    totals = []
    try:
        store = Store(pool, DatabaseHold(), retry_max_seconds=1)
        for _ in range(5):
            batch = Normalized()
            for _ in range(200):
                batch.extend(normalize_envelope(envelope(sample("nx-voice")), sources, REGISTRY))
            await store.write(batch)
            assert await pool.fetchval(f"SELECT pg_relation_size('{STAGE_TABLE}')") == 0
            totals.append(await pool.fetchval(f"SELECT pg_total_relation_size('{STAGE_TABLE}')"))
        assert await db.fetchval("SELECT count(*) FROM call_records") == 1_000
    finally:
        await pool.close()
    assert len(set(totals)) == 1, totals


# The previous release's statements, which its workers keep running during an upgrade.
PREVIOUS_INSERT = (
    "INSERT INTO outbox (record_id, revision, routing_key, body)"
    " SELECT * FROM unnest($1::uuid[], $2::integer[], $3::text[], $4::bytea[])"
    " RETURNING outbox_id, record_id, revision"
)
PREVIOUS_CLAIM = (
    "SELECT outbox_id, record_id, revision, routing_key, body FROM outbox"
    " WHERE created_at < now() - make_interval(secs => $1)"
    " ORDER BY outbox_id LIMIT $2 FOR UPDATE SKIP LOCKED"
)
PREVIOUS_DELETE = "DELETE FROM outbox WHERE outbox_id = ANY($1::bigint[])"


async def test_migration_keeps_the_waiting_rows_and_the_previous_release_keeps_working() -> None:
    async with scratch_database("outbox_ring") as url:
        await apply_up_to(url, 4)
        connection = await asyncpg.connect(url)
        try:
            waiting = await connection.fetch(
                PREVIOUS_INSERT,
                [uuid.uuid4() for _ in range(300)],
                [1] * 300,
                ["a.b.c.d"] * 300,
                [BODY % n for n in range(300)],
            )
            await connection.execute(PREVIOUS_DELETE, [r["outbox_id"] for r in waiting[:100]])
            assert 6 in await migrate(url)
            kept = await connection.fetch(
                "SELECT outbox_id, record_id, slot FROM outbox ORDER BY outbox_id"
            )
            assert [(r["outbox_id"], r["record_id"]) for r in kept] == [
                (r["outbox_id"], r["record_id"]) for r in waiting[100:]
            ]
            assert {r["slot"] for r in kept} <= set(range(len(PARTITIONS)))
            # A worker of the previous release: its insert, claim and delete still work,
            # and the ids go on from the old table's.
            (new,) = await connection.fetch(
                PREVIOUS_INSERT, [uuid.uuid4()], [1], ["a.b.c.d"], [b"{}"]
            )
            assert new["outbox_id"] > waiting[-1]["outbox_id"]
            async with connection.transaction():
                claimed = await connection.fetch(PREVIOUS_CLAIM, 0, 1_000)
                await connection.execute(PREVIOUS_DELETE, [r["outbox_id"] for r in claimed])
            assert len(claimed) == 201
            assert await connection.fetchval("SELECT count(*) FROM outbox") == 0
        finally:
            await connection.close()
