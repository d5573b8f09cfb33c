"""Time partitions and retention by drop, on the real PostgreSQL: partitions made ahead,
rows on either side of midnight in their own partitions and still found and deduplicated,
`cdrflow retention` dropping exactly the partitions past the horizon, and the migration
that partitions the existing tables in place."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import asyncpg

from cdrflow.operations.history import find_record, load_history
from cdrflow.operations.pipeline_status import gather_status, outbox_limit
from cdrflow.settings import Settings
from schemas.providers import default_registry
from schemas.sources import Sources
from tests.support.env import scratch_database
from tests.support.migrations import apply_up_to
from tests.support.processes import cdrflow
from tests.support.samples import envelope, sample
from workers.normalize import normalize_envelope
from workers.storage import transaction_sql as ledger_sql
from workers.storage.database import DatabaseHold, create_pool
from workers.storage.migrate import migrate
from workers.storage.partition_retention import (
    apply_retention,
    bound_in_place,
    ensure_ahead,
    partition_in_place,
    partitions_of,
)
from workers.storage.partitions import PARTITIONED, uuid7_floor
from workers.storage.writer import Store

DELIVERIES = PARTITIONED["deliveries"]
REJECTED = PARTITIONED["rejected_callbacks"]


def uuid7_at(moment: datetime) -> uuid.UUID:
    """An ingest id as the ingress makes it at `moment`."""
    value = uuid7_floor(moment).int | int.from_bytes(os.urandom(10)) & ((1 << 80) - 1)
    value = (value & ~(0xF << 76)) | (0x7 << 76)
    value = (value & ~(0x3 << 62)) | (0x2 << 62)
    return uuid.UUID(int=value)


@asynccontextmanager
async def migrated(label: str) -> AsyncIterator[tuple[str, asyncpg.Connection]]:
    async with scratch_database(label) as url:
        await migrate(url)
        connection = await asyncpg.connect(url)
        try:
            yield url, connection
        finally:
            await connection.close()


async def claim(connection: asyncpg.Connection, ingest_id: uuid.UUID, record_id: uuid.UUID) -> int:
    """The ledger's own claim of one delivery: how many rows it inserted (1 when fresh)."""
    status = await connection.execute(
        ledger_sql.CLAIM, [ingest_id], [0], [record_id], [datetime.now(UTC)], [True]
    )
    return int(status.rsplit(" ", 1)[1])


async def partition_of(connection: asyncpg.Connection, table: str, ingest_id: uuid.UUID) -> str:
    name: str = await connection.fetchval(
        f"SELECT tableoid::regclass::text FROM {table} WHERE ingest_id = $1",
        ingest_id,
    )
    return name


async def test_partitions_exist_ahead_after_migrate_and_across_month_and_year_ends() -> None:
    async with migrated("partitions_ahead") as (_, connection):
        now = datetime.now(UTC)
        tomorrow = uuid7_at(now + timedelta(days=1))
        await claim(connection, tomorrow, uuid.uuid4())
        assert await partition_of(connection, "deliveries", tomorrow) != "deliveries_default"
        week = uuid7_at(now + timedelta(days=DELIVERIES.ahead))
        await claim(connection, week, uuid.uuid4())
        assert await partition_of(connection, "deliveries", week) != "deliveries_default"

        created = await ensure_ahead(connection, DELIVERIES, datetime(2031, 1, 30, 12, tzinfo=UTC))
        assert created[:3] == [
            "deliveries_p20310130",
            "deliveries_p20310131",
            "deliveries_p20310201",
        ]
        assert len(created) == DELIVERIES.ahead + 1
        # Again: nothing left to create.
        assert await ensure_ahead(connection, DELIVERIES, datetime(2031, 1, 30, tzinfo=UTC)) == []
        months = await ensure_ahead(connection, REJECTED, datetime(2031, 12, 31, 23, tzinfo=UTC))
        assert months == [
            "rejected_callbacks_p203112",
            "rejected_callbacks_p203201",
            "rejected_callbacks_p203202",
        ]


async def test_rows_either_side_of_midnight_land_in_two_partitions_and_are_both_found() -> None:
    async with migrated("partitions_midnight") as (_, connection):
        await ensure_ahead(connection, DELIVERIES, datetime(2031, 1, 31, tzinfo=UTC))
        before = uuid7_at(datetime(2031, 1, 31, 23, 59, 59, 999_000, tzinfo=UTC))
        after = uuid7_at(datetime(2031, 2, 1, tzinfo=UTC))
        record = uuid.uuid4()
        assert await claim(connection, before, record) == 1
        assert await claim(connection, after, record) == 1
        assert await partition_of(connection, "deliveries", before) == "deliveries_p20310131"
        assert await partition_of(connection, "deliveries", after) == "deliveries_p20310201"
        found = await connection.fetch(
            "SELECT ingest_id FROM deliveries WHERE record_id = $1 ORDER BY ingest_id", record
        )
        assert [r["ingest_id"] for r in found] == [before, after]
        # Claimed again (a raw message delivered twice): seen, in its own partition.
        assert await claim(connection, before, record) == 0
        assert await claim(connection, after, record) == 0


async def test_a_re_push_across_midnight_and_a_week_later_is_a_delivery_of_the_same_record(
    sources: Sources,
) -> None:
    async with migrated("partitions_repush") as (url, connection):
        evening = datetime(2031, 3, 1, 23, 15, tzinfo=UTC)
        await ensure_ahead(connection, DELIVERIES, evening)
        await ensure_ahead(connection, DELIVERIES, evening + timedelta(days=7))
        pool = await create_pool(url, 1)
        call = sample("nx-voice")
        moments = [evening, evening + timedelta(minutes=90), evening + timedelta(days=7)]
        try:
            store = Store(pool, DatabaseHold(), retry_max_seconds=1)
            for moment in moments:
                request = envelope(call, moment, uuid7_at(moment))
                await store.write(normalize_envelope(request, sources, default_registry()))
        finally:
            await pool.close()
        row = await connection.fetchrow(
            "SELECT record_id, delivery_count, revision FROM call_records WHERE external_id = $1",
            call.external_id,
        )
        assert row is not None
        assert (row["delivery_count"], row["revision"]) == (3, 1)
        assert await connection.fetchval("SELECT count(*) FROM call_records") == 1
        partitions = await connection.fetch(
            "SELECT tableoid::regclass::text AS p FROM deliveries WHERE record_id = $1"
            " ORDER BY ingest_id",
            row["record_id"],
        )
        assert [r["p"] for r in partitions] == [
            "deliveries_p20310301",
            "deliveries_p20310302",
            "deliveries_p20310308",
        ]
        record_id = await find_record(connection, call.source, call.external_id)
        assert record_id == row["record_id"]
        history = await load_history(connection, record_id)
        assert history is not None
        assert [d.received_at for d in history.deliveries] == moments


async def test_status_says_when_the_partitions_ahead_run_out(settings: Settings) -> None:
    async with migrated("partitions_status") as (url, connection):
        status = await gather_status(settings.with_(database_url=url), [])
        assert status.partitions_ahead_hours["deliveries"] >= 24 * DELIVERIES.ahead
        assert not [p for p in status.problems(outbox_limit(settings)) if "partitions" in p]
        for partition in await partitions_of(connection, DELIVERIES):
            if partition.name.startswith("deliveries_p"):
                await connection.execute(f"DROP TABLE {partition.name}")
        status = await gather_status(settings.with_(database_url=url), [])
    assert status.partitions_ahead_hours["deliveries"] < 48
    assert [p for p in status.problems(outbox_limit(settings)) if "partitions" in p] == [
        "deliveries: partitions cover only"
        f" {status.partitions_ahead_hours['deliveries']:.0f} h ahead (a week when"
        " `cdrflow retention` runs hourly): is its schedule running?"
    ]


async def _day_partitions(connection: asyncpg.Connection, first: datetime, days: int) -> None:
    for day in range(days):
        await ensure_ahead(connection, DELIVERIES, first + timedelta(days=day))


async def test_retention_dry_run_lists_and_drops_nothing() -> None:
    async with migrated("retention_dry") as (url, connection):
        await _day_partitions(connection, datetime(2031, 1, 1, tzinfo=UTC), 3)
        for day in (1, 2, 3):
            await claim(connection, uuid7_at(datetime(2031, 1, day, 12, tzinfo=UTC)), uuid.uuid4())
        tables = await partitions_of(connection, DELIVERIES)
        now = datetime(2031, 3, 1, tzinfo=UTC)
        settings = Settings(database_url=url, delivery_retention_days=35)
        report = await apply_retention(connection, settings, now, dry_run=True)
        assert (
            "deliveries: would drop deliveries_p20310101 (ends 2031-01-02 00:00:00Z,"
            in "\n".join(report)
        )
        made_by_migrate = DELIVERIES.partition_name(datetime.now(UTC))
        assert {"deliveries_p20310101", "deliveries_p20310102", made_by_migrate} <= set(
            report.dropped
        )
        assert report.created  # the partitions of March would be made
        assert await partitions_of(connection, DELIVERIES) == tables
        assert await connection.fetchval("SELECT count(*) FROM deliveries") == 3


async def test_retention_drops_exactly_the_partitions_entirely_past_the_horizon() -> None:
    async with migrated("retention_drop") as (url, connection):
        await _day_partitions(connection, datetime(2031, 1, 25, tzinfo=UTC), 20)
        inside = uuid7_at(datetime(2031, 2, 3, 13, tzinfo=UTC))  # after the horizon
        outside_same_day = uuid7_at(datetime(2031, 2, 3, 1, tzinfo=UTC))  # before it
        outside = uuid7_at(datetime(2031, 2, 2, 23, 59, 59, 999_000, tzinfo=UTC))
        stray = uuid.UUID("ffffffff-ffff-4fff-bfff-ffffffffffff")  # not a UUID 7: default
        for ingest_id in (inside, outside_same_day, outside, stray):
            await claim(connection, ingest_id, uuid.uuid4())
        now = datetime(2031, 3, 10, 12, tzinfo=UTC)
        settings = Settings(database_url=url, delivery_retention_days=35)  # horizon Feb 3 12:00
        before = {p.name: p for p in await partitions_of(connection, DELIVERIES)}
        report = await apply_retention(connection, settings, now, dry_run=False)
        assert not report.failed
        past = now - timedelta(days=35)
        expected = {n for n, p in before.items() if p.ends is not None and p.ends <= past}
        assert set(report.dropped) == expected
        assert "deliveries_p20310202" in expected
        assert DELIVERIES.partition_name(datetime.now(UTC)) in expected  # made by migrate
        after = {p.name for p in await partitions_of(connection, DELIVERIES)}
        assert after.isdisjoint(expected)
        assert {"deliveries_p20310203", "deliveries_default"} <= after
        kept = {r["ingest_id"] for r in await connection.fetch("SELECT ingest_id FROM deliveries")}
        assert kept == {inside, outside_same_day, stray}
        assert "1 rows in deliveries_default" in "\n".join(report)
        assert "call_records: kept forever (CDRFLOW_RETENTION_RECORDS_DAYS=0)" in list(report)
        assert "originals: kept forever (CDRFLOW_RETENTION_ORIGINALS_DAYS=0)" in list(report)
        # Rejected callbacks are kept forever by default.
        assert await apply_retention(connection, settings, now, dry_run=False)
        names = {p.name for p in await partitions_of(connection, REJECTED)}
        assert REJECTED.partition_name(datetime.now(UTC)) in names


async def test_a_drop_never_waits_long_behind_a_reader_and_the_command_says_so() -> None:
    async with scratch_database("retention_busy") as url:
        await apply_up_to(url, 7)
        connection = await asyncpg.connect(url)
        try:
            # Partitioned two months ago: the command, at today's time, has days to drop.
            past = datetime.now(UTC) - timedelta(days=60)
            await bound_in_place(connection, past)
            async with connection.transaction():
                await partition_in_place(connection)
            await ensure_ahead(connection, DELIVERIES, past + timedelta(days=10))
            old = DELIVERIES.partition_name(past + timedelta(days=10))
            await _command_against_a_reader(url, connection, old)
        finally:
            await connection.close()


async def _command_against_a_reader(url: str, connection: asyncpg.Connection, old: str) -> None:
    env = {"CDRFLOW_DATABASE_URL": url, "CDRFLOW_LOG_LEVEL": "warning"}
    reader = await asyncpg.connect(url)
    try:
        async with reader.transaction():
            await reader.execute("SELECT count(*) FROM deliveries")  # holds its lock
            started = asyncio.get_running_loop().time()
            busy = await asyncio.to_thread(cdrflow, "retention", env=env, timeout=60)
            waited = asyncio.get_running_loop().time() - started
    finally:
        await reader.close()
    assert busy.returncode == 1, busy.stdout + busy.stderr
    assert f"deliveries: busy, {old} not dropped (next run)" in busy.stdout
    assert waited < 20  # 1 s for each of the 9 partitions it could not detach, and a start
    assert old in {p.name for p in await partitions_of(connection, DELIVERIES)}
    dry = await asyncio.to_thread(cdrflow, "retention", "--dry-run", env=env, timeout=60)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert f"deliveries: would drop {old}" in dry.stdout
    done = await asyncio.to_thread(cdrflow, "retention", env=env, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"deliveries: dropped {old}" in done.stdout
    assert "deliveries: dropped deliveries_legacy" in done.stdout
    assert "call_records: not partitioned (run `cdrflow migrate`)" in done.stdout  # at 7
    left = {p.name for p in await partitions_of(connection, DELIVERIES)}
    assert old not in left
    assert "deliveries_legacy" not in left


PREVIOUS_REJECT = ledger_sql.REJECT  # the statement of the previous release is the same
# The claim of the releases before schema 16, first in their transaction (no `repush`).
PREVIOUS_CLAIM = """
INSERT INTO deliveries (ingest_id, item, record_id, received_at)
SELECT * FROM unnest($1::uuid[], $2::integer[], $3::uuid[], $4::timestamptz[])
ON CONFLICT DO NOTHING
RETURNING ingest_id, item
"""


async def test_migration_keeps_every_row_and_the_previous_release_keeps_working() -> None:
    rows = 100_000
    async with scratch_database("partition_in_place") as url:
        await apply_up_to(url, 7)
        connection = await asyncpg.connect(url)
        try:
            now = datetime.now(UTC)
            ids = [uuid7_at(now - timedelta(seconds=40 * 86400 * n / rows)) for n in range(rows)]
            records = [uuid.uuid4() for _ in range(rows)]
            await connection.execute(
                "INSERT INTO deliveries SELECT * FROM"
                " unnest($1::uuid[], $2::integer[], $3::uuid[], $4::timestamptz[])",
                ids,
                [0] * rows,
                records,
                [now] * rows,
            )
            rejected = ids[:1000]
            await _reject(connection, rejected)
            checksum = "SELECT count(*), sum(hashtext(t::text)) FROM {} t"
            # Its columns at schema 7 (schema 16 adds `repush`, true for every row).
            delivery_checksum = (
                "SELECT count(*), sum(hashtext((ingest_id, item, record_id, received_at)::text))"
                " FROM deliveries"
            )
            deliveries = await connection.fetchrow(delivery_checksum)
            rejections = await connection.fetchrow(checksum.format("rejected_callbacks"))
            last_rejected_id = await connection.fetchval(
                "SELECT max(rejected_id) FROM rejected_callbacks"
            )

            assert 9 in await migrate(url)

            assert await connection.fetchrow(delivery_checksum) == deliveries
            assert await connection.fetchval("SELECT bool_and(repush) FROM deliveries")
            assert await connection.fetchrow(checksum.format("rejected_callbacks")) == rejections
            for table in ("deliveries", "rejected_callbacks"):
                kind = await connection.fetchval(
                    "SELECT relkind::text FROM pg_class WHERE relname = $1", table
                )
                assert kind == "p"
            # The previous release's statements: a delivery seen before the upgrade is
            # still seen, a new one is claimed, a rejection seen before is updated.
            assert await connection.fetch(PREVIOUS_CLAIM, [ids[5]], [0], [records[5]], [now]) == []
            fresh = uuid7_at(datetime.now(UTC))
            assert (
                len(await connection.fetch(PREVIOUS_CLAIM, [fresh], [0], [uuid.uuid4()], [now]))
                == 1
            )
            await _reject(connection, [rejected[0], fresh])
            assert await connection.fetchval("SELECT count(*) FROM rejected_callbacks") == 1001
            new_id = await connection.fetchval(
                "SELECT rejected_id FROM rejected_callbacks WHERE ingest_id = $1", fresh
            )
            assert new_id > last_rejected_id
            assert await partition_of(connection, "deliveries", ids[5]) == "deliveries_legacy"
        finally:
            await connection.close()


async def _reject(connection: asyncpg.Connection, ingest_ids: list[uuid.UUID]) -> None:
    n = len(ingest_ids)
    await connection.execute(
        PREVIOUS_REJECT,
        ingest_ids,
        [0] * n,
        ["s"] * n,
        ["t"] * n,
        ["nxcloud"] * n,
        [datetime.now(UTC)] * n,
        ["unparseable"] * n,
        ["bad"] * n,
        ["{}"] * n,
        [b"x"] * n,
    )
