"""Partitions with their columns packed (migration 17, workers/storage/partition_layout.py),
on the real PostgreSQL: a new database's partitions are packed, rows go in and come out
through the parent as they went in and take fewer bytes, and the migration makes again
only the partitions that hold no row and have not ended."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import asyncpg

from tests.support.env import scratch_database
from workers.storage.migrate import migrate
from workers.storage.partition_retention import partitions_of, relayout_partitions
from workers.storage.partitions import PARTITIONED

RECORDS = PARTITIONED["call_records"]

_LAYOUT = """
SELECT t.typlen AS length, t.typalign::text AS align, a.attname AS name
FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum
"""
_ALIGN = {"d": 8, "i": 4, "s": 2, "c": 1}

# A record as a worker stores it (its columns that have no default), the rest NULL.
_INSERT = """
INSERT INTO call_records (record_id, source, tenant, provider, event, external_id, status,
    caller, talk_seconds, cost, ended_at, schema_version, received_at, first_seen_at,
    last_seen_at, content_hash, content_received_at, content_ingest_id, content_item,
    bundle_id, original_item, payload_item, stored_at)
VALUES ($1, 'nx-cc', 'default', 'nxcloud', 'call_center_report', $2::text, 'answered',
    '8613800138000', 42, 0.0150, $3, 1, $3, $3, $3, sha256(convert_to($2::text, 'UTF8')), $3,
    $1, 0, 7, 1, 2, $4)
"""


def packed(layout: list[asyncpg.Record]) -> bool:
    """Fixed-length columns before variable-length ones, alignment never growing."""
    fixed = [c for c in layout if c["length"] > 0]
    if layout[: len(fixed)] != fixed:
        return False
    aligns = [8 if c["length"] % 8 == 0 else _ALIGN[c["align"]] for c in fixed]
    return aligns == sorted(aligns, reverse=True)


async def test_a_new_database_has_every_partition_packed_and_rows_round_trip() -> None:
    async with scratch_database("packed_new") as url:
        await migrate(url)
        connection = await asyncpg.connect(url)
        try:
            parent = await connection.fetch(_LAYOUT, "call_records")
            assert not packed(parent)  # the order consumers see is the table's own
            assert [c["name"] for c in parent[:3]] == ["record_id", "source", "tenant"]
            for table in PARTITIONED.values():
                names = [p.name for p in await partitions_of(connection, table)]
                assert not any(name.endswith("_legacy") for name in names)
                for name in names:
                    if name != table.default_partition:
                        assert packed(await connection.fetch(_LAYOUT, name)), name
            current = RECORDS.partition_name(datetime.now(UTC))
            layout = await connection.fetch(_LAYOUT, current)
            assert sorted(c["name"] for c in layout) == sorted(c["name"] for c in parent)

            record_id, now = uuid.uuid4(), datetime.now(UTC)
            await connection.execute(_INSERT, record_id, "20231117134248000001", now, now)
            stored = await connection.fetchrow(
                "SELECT *, tableoid::regclass::text AS partition FROM call_records"
                " WHERE record_id = $1",
                record_id,
            )
            assert stored is not None
            assert stored["partition"] == current
            assert (stored["caller"], stored["talk_seconds"], stored["ended_at"]) == (
                "8613800138000",
                42,
                now,
            )
            assert str(stored["cost"]) == "0.0150"
            assert stored["currency"] == "USD"
            assert stored["labels"] == []
            assert stored["payload_item"] == 2

            # The same row in the parent's order takes more bytes.
            await connection.execute("CREATE TEMP TABLE unpacked (LIKE call_records)")
            await connection.execute("INSERT INTO unpacked SELECT * FROM call_records")
            sizes = await connection.fetchrow(
                f"SELECT (SELECT pg_column_size(p.*) FROM {current} p) AS packed,"
                " (SELECT pg_column_size(u.*) FROM unpacked u) AS unpacked"
            )
            assert sizes is not None
            assert sizes["packed"] < sizes["unpacked"]
        finally:
            await connection.close()


async def test_the_migration_makes_again_only_empty_partitions_that_have_not_ended() -> None:
    async with scratch_database("packed_upgrade") as url:
        await migrate(url)
        connection = await asyncpg.connect(url)
        try:
            # Two months ahead made as releases before schema 17 made them: in the
            # parent's order, one of them holding a row (a clock set ahead).
            old_layout = {}
            for month in ("2031-01-01", "2031-02-01"):
                start = datetime.fromisoformat(month).replace(tzinfo=UTC)
                name = RECORDS.partition_name(start)
                await connection.execute(
                    f"CREATE TABLE {name} (LIKE call_records INCLUDING DEFAULTS"
                    " INCLUDING CONSTRAINTS INCLUDING STORAGE INCLUDING COMPRESSION)"
                )
                end = "2031-02-01" if month == "2031-01-01" else "2031-03-01"
                await connection.execute(
                    f"ALTER TABLE call_records ATTACH PARTITION {name}"
                    f" FOR VALUES FROM ('{month}') TO ('{end}')"
                )
                old_layout[name] = await connection.fetchval("SELECT to_regclass($1)::oid", name)
            full, empty = (
                RECORDS.partition_name(datetime(2031, 1, 1, tzinfo=UTC)),
                (RECORDS.partition_name(datetime(2031, 2, 1, tzinfo=UTC))),
            )
            moment = datetime(2031, 1, 15, tzinfo=UTC)
            await connection.execute(_INSERT, uuid.uuid4(), "early", moment, moment)
            current = RECORDS.partition_name(datetime.now(UTC))
            await connection.execute(
                _INSERT, uuid.uuid4(), "today", datetime.now(UTC), datetime.now(UTC)
            )
            current_oid = await connection.fetchval("SELECT to_regclass($1)::oid", current)

            async with connection.transaction():
                await relayout_partitions(connection)

            oid = "SELECT to_regclass($1)::oid"
            assert await connection.fetchval(oid, full) == old_layout[full]  # a row: kept
            assert await connection.fetchval(oid, current) == current_oid
            assert not packed(await connection.fetch(_LAYOUT, full))
            # The empty one is gone: it was past the two months ahead made by `migrate`,
            # so no partition is made again in its place; the months ahead are packed.
            assert await connection.fetchval(oid, empty) is None
            for name in [p.name for p in await partitions_of(connection, RECORDS)]:
                if name not in (full, RECORDS.default_partition):
                    assert packed(await connection.fetch(_LAYOUT, name)), name
            assert await connection.fetchval("SELECT count(*) FROM call_records") == 2
        finally:
            await connection.close()
