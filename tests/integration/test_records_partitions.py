"""Records, revisions and original bytes partitioned by month, on the real PostgreSQL:
partitions made ahead, deduplication exact across months through `call_keys`, retention
dropping whole months of records (with their revisions and keys) and of original bytes
separately, and schema 12 applied in place to a database holding records."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from cdrflow.operations.history import find_record, load_history
from cdrflow.settings import Settings
from schemas.providers import default_registry
from schemas.record import record_id_for
from schemas.sources import Sources
from tests.support.env import scratch_database
from tests.support.samples import envelope, sample
from workers.batch import BatchResult, Normalized
from workers.normalize import normalize_envelope
from workers.storage import migrate as migrate_module
from workers.storage import originals, records_partitioning
from workers.storage.database import create_pool
from workers.storage.migrate import available, migrate
from workers.storage.partition_retention import (
    apply_retention,
    bound_in_place,
    ensure_ahead,
    partitions_of,
)
from workers.storage.partitions import PARTITIONED, Granularity, next_start, period_start
from workers.storage.transaction import write_batch

REGISTRY = default_registry()
RECORDS = PARTITIONED["call_records"]
REVISIONS = PARTITIONED["record_revisions"]
ORIGINALS = PARTITIONED["originals"]
MONTHLY = (RECORDS, REVISIONS, ORIGINALS)
# Every revision of every record, as one digest (`record_history`, the SQL interface).
HISTORY = """
SELECT count(*) AS revisions, md5(string_agg(concat_ws('|', record_id, revision, shown,
    content::text, raw::text, encode(body, 'hex'), encode(content_hash, 'hex'), ingest_id,
    item, received_at, stored_at, first_seen_at, last_seen_at, delivery_count), E'\\n'
    ORDER BY record_id, revision)) AS digest
FROM record_history
"""


def month_before(start: datetime) -> datetime:
    return period_start(Granularity.MONTH, start - timedelta(days=1))


@contextmanager
def schema_up_to(version: int) -> Iterator[None]:
    """`cdrflow migrate` as a release whose latest step is `version` runs it."""
    steps = [m for m in available() if m.version <= version]
    original = migrate_module.available
    migrate_module.available = lambda: steps
    try:
        yield
    finally:
        migrate_module.available = original


async def store(pool: asyncpg.Pool, sources: Sources, *envelopes: object) -> BatchResult:
    normalized = Normalized()
    for item in envelopes:
        normalized.extend(normalize_envelope(item, sources, REGISTRY))  # type: ignore[arg-type]
    assert not normalized.rejections
    async with pool.acquire() as connection:
        return await write_batch(connection, normalized)


async def move(connection: asyncpg.Connection, external_id: str, moment: datetime) -> None:
    """As if the call had been stored at `moment`: its record, key, revisions and bundles
    go to that month's partitions (an update of the partition key moves the row)."""
    record_id = record_id_for("nx-cc", external_id)
    bundles = await connection.fetchval(
        "SELECT array_agg(bundle_id) FROM (SELECT bundle_id FROM call_records"
        " WHERE record_id = $1 UNION SELECT bundle_id FROM record_revisions"
        " WHERE record_id = $1) b WHERE bundle_id IS NOT NULL",
        record_id,
    )
    async with connection.transaction():
        for table in ("call_records", "call_keys", "record_revisions"):
            await connection.execute(
                f"UPDATE {table} SET stored_at = $2 WHERE record_id = $1",
                record_id,
                moment,
            )
        await connection.execute(
            "UPDATE originals SET stored_at = $2 WHERE bundle_id = ANY($1::bigint[])",
            bundles or [],
            moment,
        )


async def partition_holding(connection: asyncpg.Connection, external_id: str) -> str | None:
    name: str | None = await connection.fetchval(
        "SELECT tableoid::regclass::text FROM call_records WHERE record_id = $1",
        record_id_for("nx-cc", external_id),
    )
    return name


@asynccontextmanager
async def partitioned_since(
    label: str, since: datetime
) -> AsyncIterator[tuple[asyncpg.Pool, asyncpg.Connection]]:
    """A database whose records were partitioned at `since` (schema 12 applied then, its
    legacy partitions ending the month after), with every month's partitions up to now."""
    async with scratch_database(label) as url:
        with schema_up_to(11):
            await migrate(url)
        connection = await asyncpg.connect(url)
        try:
            await records_partitioning.prepare(connection)
            await bound_in_place(connection, since, records_partitioning.STEP)
            step = next(m for m in available() if m.version == records_partitioning.STEP)
            async with connection.transaction():
                await connection.execute(step.sql)
                await records_partitioning.partition(connection)
                await connection.execute(
                    "INSERT INTO cdrflow_migrations VALUES ($1, $2)", step.version, step.name
                )
            await migrate(url)  # the steps after it, which today's writer needs
            month = period_start(Granularity.MONTH, since)
            while month <= datetime.now(UTC):
                for table in MONTHLY:
                    await ensure_ahead(connection, table, month)
                month = next_start(Granularity.MONTH, month)
            pool = await create_pool(url, 2, name="test-records-partitions")
            try:
                yield pool, connection
            finally:
                await pool.close()
        finally:
            await connection.close()


async def test_record_partitions_exist_ahead_across_month_and_year_ends() -> None:
    async with scratch_database("records_ahead") as url:
        await migrate(url)
        connection = await asyncpg.connect(url)
        try:
            now = datetime.now(UTC)
            for table in MONTHLY:
                names = {p.name for p in await partitions_of(connection, table)}
                start = period_start(Granularity.MONTH, now)
                for _ in range(table.ahead):
                    start = next_start(Granularity.MONTH, start)
                    assert table.partition_name(start) in names
                assert table.default_partition in names
            made = await ensure_ahead(connection, RECORDS, datetime(2031, 12, 31, 23, tzinfo=UTC))
            assert made == ["call_records_p203112", "call_records_p203201", "call_records_p203202"]
            made = await ensure_ahead(connection, REVISIONS, datetime(2031, 1, 31, tzinfo=UTC))
            assert made[:2] == ["record_revisions_p203101", "record_revisions_p203102"]
            assert await ensure_ahead(connection, RECORDS, datetime(2031, 12, 1, tzinfo=UTC)) == []
        finally:
            await connection.close()


async def test_re_pushes_across_a_month_end_and_a_week_later_are_deliveries(
    sources: Sources,
) -> None:
    now = datetime.now(UTC)
    this_month = period_start(Granularity.MONTH, now)
    async with partitioned_since("records_repush", now - timedelta(days=120)) as (pool, db):
        # Stored at 23:15 on the last day of last month; re-pushed since (90 minutes later
        # falls in this month).
        evening = this_month - timedelta(minutes=45)
        await store(pool, sources, envelope(sample("nx-cc", "month-end"), evening))
        await move(db, "month-end", evening)
        week_ago = now - timedelta(days=7)
        await store(pool, sources, envelope(sample("nx-cc", "week"), week_ago))
        await move(db, "week", week_ago)
        assert await partition_holding(db, "month-end") == RECORDS.partition_name(evening)

        for external_id, first in (("month-end", evening), ("week", week_ago)):
            again = envelope(sample("nx-cc", external_id), first + timedelta(minutes=90))
            later = envelope(sample("nx-cc", external_id), now)
            assert (await store(pool, sources, again)).published == []
            assert (await store(pool, sources, later)).published == []
            row = await db.fetchrow(
                "SELECT count(*) OVER () AS rows, delivery_count, revision, stored_at"
                " FROM call_records WHERE source = 'nx-cc' AND external_id = $1",
                external_id,
            )
            assert row is not None
            assert (row["rows"], row["delivery_count"], row["revision"]) == (1, 3, 1)
            assert row["stored_at"] == first
            record_id = await find_record(db, "nx-cc", external_id)
            assert record_id is not None
            history = await load_history(db, record_id)
            assert history is not None
            assert [r.revision for r in history.revisions] == [1]
            assert len(history.deliveries) == 3
            # A new content is the next revision, in the record's own month.
            changed = envelope(sample("nx-cc", external_id, 1), now)
            assert [e.revision for e in (await store(pool, sources, changed)).published] == [2]
            assert await db.fetchval("SELECT count(*) FROM call_records_default") == 0
        assert await db.fetchval("SELECT count(*) FROM call_keys") == 2


async def test_concurrent_batches_holding_the_same_new_call_make_one_record(
    sources: Sources,
) -> None:
    async with partitioned_since("records_concurrent", datetime.now(UTC)) as (pool, db):
        calls = [envelope(sample("nx-cc", f"c{n}")) for n in range(50)]
        again = [envelope(sample("nx-cc", f"c{n}")) for n in reversed(range(50))]
        results = await asyncio.gather(store(pool, sources, *calls), store(pool, sources, *again))
        assert sum(len(r.published) for r in results) == 50
        assert await db.fetchval("SELECT count(*) FROM call_records") == 50
        assert await db.fetchval("SELECT sum(delivery_count) FROM call_records") == 100
        assert await db.fetchval("SELECT count(*) FROM call_keys") == 50


async def test_retention_drops_whole_months_of_records_revisions_keys_and_originals(
    sources: Sources,
) -> None:
    now = datetime.now(UTC)
    this_month = period_start(Granularity.MONTH, now)
    last_month = month_before(this_month)
    # Retention runs as of `at`: at least a day and a half into this month.
    at = max(now, this_month + timedelta(days=1, hours=12))
    async with partitioned_since("records_retention", now - timedelta(days=150)) as (pool, db):
        moments = {
            "legacy": now - timedelta(days=149),  # in the legacy partition
            "old": month_before(last_month) + timedelta(days=3),
            "mid": last_month + timedelta(days=5),
            "new": now,
        }
        for external_id, moment in moments.items():
            await store(pool, sources, envelope(sample("nx-cc", external_id), moment))
            changed = envelope(sample("nx-cc", external_id, 1), moment + timedelta(minutes=5))
            await store(pool, sources, changed)  # revision 2: record_revisions rows
            await move(db, external_id, moment)
        assert await partition_holding(db, "legacy") == "call_records_legacy"
        before = {t.name: {p.name for p in await partitions_of(db, t)} for t in MONTHLY}
        # Records: every month before last month is past; original bytes: before this one.
        records_days = (at - last_month).days
        originals_days = (at - this_month).days
        settings = Settings(
            retention_records_days=records_days, retention_originals_days=originals_days
        )

        dry = await apply_retention(db, settings, at, dry_run=True)
        assert not dry.failed
        assert {t.name: {p.name for p in await partitions_of(db, t)} for t in MONTHLY} == before
        assert await db.fetchval("SELECT count(*) FROM call_keys") == 4
        assert "call_records: would drop call_records_legacy" in "\n".join(dry)

        done = await apply_retention(db, settings, at, dry_run=False)
        assert not done.failed
        horizon = {
            RECORDS.name: at - timedelta(days=records_days),
            REVISIONS.name: at - timedelta(days=records_days),
            ORIGINALS.name: at - timedelta(days=originals_days),
        }
        expected = {
            name
            for table in MONTHLY
            for name in before[table.name]
            if name.startswith(f"{table.name}_p")
            and next_start(Granularity.MONTH, _month_of(name)) <= horizon[table.name]
        } | {"call_records_legacy", "record_revisions_legacy", "originals_legacy"}
        assert set(done.dropped) == expected
        assert {
            RECORDS.partition_name(month_before(last_month)),
            REVISIONS.partition_name(month_before(last_month)),
            ORIGINALS.partition_name(last_month),
        } <= expected
        assert RECORDS.partition_name(last_month) not in expected
        left = {p.name for t in MONTHLY for p in await partitions_of(db, t)}
        assert left.isdisjoint(expected)
        kept = await db.fetch("SELECT external_id FROM call_records ORDER BY external_id")
        assert [r["external_id"] for r in kept] == ["mid", "new"]
        keys = await db.fetch("SELECT record_id FROM call_keys")
        assert {r["record_id"] for r in keys} == {
            record_id_for("nx-cc", "mid"),
            record_id_for("nx-cc", "new"),
        }
        # The kept record's history keeps its content and counts; its bytes are gone.
        rows = await db.fetch(
            "SELECT revision, content, raw, body FROM record_history WHERE external_id = 'mid'"
            " ORDER BY revision"
        )
        assert [r["revision"] for r in rows] == [1, 2]
        assert all(r["content"] is not None for r in rows)
        assert all(r["raw"] is None and r["body"] is None for r in rows)
        new = await db.fetch("SELECT raw FROM record_history WHERE external_id = 'new'")
        assert len(new) == 2
        assert all(r["raw"] is not None for r in new)
        # A re-push of a call whose month is gone is a new record, in this month.
        result = await store(pool, sources, envelope(sample("nx-cc", "old")))
        assert [e.revision for e in result.published] == [1]
        assert await partition_holding(db, "old") == RECORDS.partition_name(now)
        # A re-push of a kept call whose bytes are gone is still a delivery of its revision.
        result = await store(pool, sources, envelope(sample("nx-cc", "mid", 1)))
        assert result.published == []


def _month_of(partition: str) -> datetime:
    stamp = partition.rsplit("_p", 1)[1]
    return datetime(int(stamp[:4]), int(stamp[4:]), 1, tzinfo=UTC)


@pytest.mark.timeout(60)
async def test_schema_12_in_place_keeps_every_record_and_revision_and_dedups_old_calls(
    sources: Sources, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with scratch_database("records_in_place") as url:
        with schema_up_to(11):
            await migrate(url)
        connection = await asyncpg.connect(url)
        try:
            # Records as the workers store them at schema 11 (the writer's statements, given
            # the key table, index and column they need, taken away again before the upgrade).
            await connection.execute(
                "CREATE TABLE call_keys (record_id uuid PRIMARY KEY, stored_at timestamptz);"
                "CREATE UNIQUE INDEX scaffold ON call_records (record_id, stored_at);"
                "ALTER TABLE deliveries ADD COLUMN repush boolean DEFAULT true"
            )
            pool = await create_pool(url, 2, name="test-records-in-place")
            try:
                with monkeypatch.context() as patch:
                    # Each payload an item of its own, as schema 11's writer stored it
                    # (schema 15 stores a payload that is its body once; 11's views
                    # could not read that).
                    patch.setattr(originals, "payload_is_body", lambda envelope, payload: False)
                    calls = [f"old{n}" for n in range(2_000)]
                    for start in range(0, len(calls), 500):
                        chunk = [envelope(sample("nx-cc", c)) for c in calls[start : start + 500]]
                        await store(pool, sources, *chunk)
                    for changed in (calls[:200], calls[:100]):
                        await store(
                            pool, sources, *(envelope(sample("nx-cc", c, 1)) for c in changed)
                        )
            finally:
                await pool.close()
            await connection.execute(
                "DROP TABLE call_keys; DROP INDEX scaffold;"
                " ALTER TABLE deliveries DROP COLUMN repush"
            )
            before = await connection.fetchrow(HISTORY)
            assert before is not None
            assert before["revisions"] == 2_200

            # A worker of the previous release still connected: the partitioning waits
            # (test_records_rolling.py has them writing meanwhile).
            previous = await create_pool(url, 1, name=records_partitioning.PREVIOUS_WORKERS)
            try:
                assert 12 in await migrate(url)
                assert await records_partitioning.is_pending(connection)
                assert await connection.fetchrow(HISTORY) == before
            finally:
                await previous.close()
            # Gone: the next `cdrflow retention` (or `cdrflow migrate`) partitions.
            assert await migrate_module.complete_partitioning(connection) is True
            assert not await records_partitioning.is_pending(connection)
            assert await migrate(url) == []

            for table in MONTHLY:
                kind = await connection.fetchval(
                    "SELECT relkind::text FROM pg_class WHERE oid = to_regclass($1)", table.name
                )
                assert kind == "p"
            assert await connection.fetchrow(HISTORY) == before
            assert await connection.fetchval("SELECT count(*) FROM call_keys") == 2_000
            assert await partition_holding(connection, "old7") == "call_records_legacy"
            legacy = await connection.fetchval(
                "SELECT count(*) FROM call_records_legacy WHERE source = 'nx-cc'"
            )
            assert legacy == 2_000  # attached, not copied
            pool = await create_pool(url, 2, name="test-records-in-place")
            try:
                # Old calls re-pushed: deliveries of their revisions; one with new content
                # is its next revision; a new call is a new record.
                result = await store(
                    pool,
                    sources,
                    envelope(sample("nx-cc", "old700")),
                    envelope(sample("nx-cc", "old300")),
                    envelope(sample("nx-cc", "old5", 1)),
                )
                assert result.published == []
                result = await store(pool, sources, envelope(sample("nx-cc", "old1500", 1)))
                assert [e.revision for e in result.published] == [2]
                result = await store(pool, sources, envelope(sample("nx-cc", "brand-new")))
                assert [e.revision for e in result.published] == [1]
            finally:
                await pool.close()
            counts = await connection.fetch(
                "SELECT external_id, delivery_count, revision FROM call_records"
                " WHERE external_id = ANY($1::text[]) ORDER BY external_id",
                ["old700", "old300", "old5", "old1500"],
            )
            assert [(r["external_id"], r["delivery_count"], r["revision"]) for r in counts] == [
                ("old1500", 2, 2),
                ("old300", 2, 1),
                ("old5", 4, 2),
                ("old700", 2, 1),
            ]
            assert await connection.fetchval("SELECT count(*) FROM call_records") == 2_001
        finally:
            await connection.close()
