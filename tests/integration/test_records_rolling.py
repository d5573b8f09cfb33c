"""Schema 12 as a rolling upgrade, on the real PostgreSQL: workers of the previous release
(their statements, emulated here) keep storing new calls and re-pushes while `cdrflow
migrate` runs; it applies every step but the partitioning, which stays pending while they
are connected; this release's workers write the plain tables beside them; once they have
gone, the next run partitions, and nothing is lost or counted twice."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import asyncpg
import pytest

from cdrflow.operations.pipeline_status import PipelineStatus, read_database
from schemas.record import RECORD_COLUMNS
from schemas.sources import Sources
from tests.integration.test_records_partitions import HISTORY, schema_up_to, store
from tests.support.env import scratch_database
from tests.support.samples import envelope, sample
from workers.storage import originals, records_partitioning
from workers.storage import transaction_sql as sql
from workers.storage.database import STAGE_TABLE, create_pool, is_transient
from workers.storage.migrate import available, complete_partitioning, migrate

TABLES = ("call_records", "record_revisions", "originals")
T = TypeVar("T")
# HISTORY's digest, of the calls stored before the partitioning (not `rolling...`).
HISTORY_BEFORE_ROLLING = HISTORY.replace(
    "AS digest\nFROM record_history",
    "AS digest\nFROM record_history WHERE external_id NOT LIKE 'rolling%'",
).replace("SELECT count(*) AS revisions, md5(", "SELECT md5(")

# The previous release's batch statements (schema 11), as its workers run them: the
# record's upsert on (source, external_id), no key of its own in call_keys (the trigger of
# step 12 writes it), no `repush` in its claims. The same parameters as this release's, so
# that this release's transaction code drives them.
_PREVIOUS = {
    "CLAIM_KEYS": "SELECT NULL::uuid AS record_id WHERE false",
    "KEEPS_SINGLE_REVISION": "SELECT 1",
    "UPSERT": f"""
INSERT INTO call_records AS c (
    {", ".join(RECORD_COLUMNS)}, received_at, first_seen_at, last_seen_at, delivery_count,
    revision, content_hash, content_received_at, content_ingest_id, content_item, bundle_id,
    original_item, payload_item)
SELECT {", ".join(f"s.{c}" for c in RECORD_COLUMNS)}, t.first_received_at,
    t.first_received_at, t.last_received_at, t.deliveries, s.ordinal + 1, s.content_hash,
    s.last_received_at, s.ingest_id, s.item,
    CASE WHEN t.newest = 0 THEN s.bundle_id END, CASE WHEN t.newest = 0 THEN s.original_item END,
    CASE WHEN t.newest = 0 THEN s.payload_item END
FROM {STAGE_TABLE} s JOIN (
    SELECT record_id, max(ordinal) AS newest, sum(deliveries)::integer AS deliveries,
        min(first_received_at) AS first_received_at, max(last_received_at) AS last_received_at
    FROM {STAGE_TABLE} GROUP BY record_id
) t ON s.record_id = t.record_id AND s.ordinal = t.newest
ORDER BY s.source, s.external_id
ON CONFLICT (source, external_id) DO UPDATE SET
    delivery_count = c.delivery_count + excluded.delivery_count,
    received_at = least(c.received_at, excluded.received_at),
    first_seen_at = least(c.first_seen_at, excluded.first_seen_at),
    last_seen_at = greatest(c.last_seen_at, excluded.last_seen_at)
WHERE excluded.origin = 'push'
RETURNING record_id, (xmax = 0 OR record_id = ANY($1::uuid[])) AS created, revision, origin,
    content_received_at, received_at, stored_at, first_seen_at, last_seen_at, delivery_count,
    false AS alone
""",
    "KNOWN": f"""
SELECT s.record_id, s.ordinal, r.revision AS known,
    (SELECT max(m.revision) FROM record_revisions m WHERE m.record_id = s.record_id) AS last
FROM {STAGE_TABLE} s
LEFT JOIN record_revisions r ON r.record_id = s.record_id AND r.content_hash = s.content_hash
WHERE s.record_id = ANY($1::uuid[])
""",
    "NEW_REVISIONS": sql.NEW_REVISIONS.replace(", reprocessed_at, stored_at)", ", reprocessed_at)")
    .replace(",\n    greatest(now(), k.stored_at)", "")
    .replace("JOIN call_keys k ON k.record_id = s.record_id", ""),
    "EARLIER_DELIVERED": sql.EARLIER_DELIVERED.replace(
        "JOIN call_keys k ON k.record_id = u.record_id", ""
    ).replace(" AND r.stored_at >= k.stored_at", ""),
    "SHOWN": sql.SHOWN.replace("JOIN call_keys k ON k.record_id = s.record_id", "").replace(
        "WHERE c.record_id = s.record_id AND c.stored_at = k.stored_at",
        "WHERE c.source = s.source AND c.external_id = s.external_id",
    ),
    "CLAIM": """
INSERT INTO deliveries (ingest_id, item, record_id, received_at)
SELECT i, n, r, t FROM unnest($1::uuid[], $2::integer[], $3::uuid[], $4::timestamptz[],
    $5::boolean[]) AS u(i, n, r, t, x)
ON CONFLICT DO NOTHING
RETURNING ingest_id, item
""",
}


@contextmanager
def previous_release(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    with monkeypatch.context() as patch:
        for name, statement in _PREVIOUS.items():
            patch.setattr(sql, name, statement)
        # Each payload an item of its own, as the previous release stores it.
        patch.setattr(originals, "payload_is_body", lambda envelope, payload: False)
        yield


async def kinds(connection: asyncpg.Connection) -> list[str]:
    return [
        await connection.fetchval(
            "SELECT relkind::text FROM pg_class WHERE oid = to_regclass($1)", table
        )
        for table in TABLES
    ]


@pytest.mark.timeout(180)
async def test_schema_12_rolls_while_previous_release_workers_store(
    sources: Sources, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: Counter[str] = Counter()  # deliveries stored, by call

    async def send(pool: asyncpg.Pool, *calls: tuple[str, int], previous: bool) -> list[int]:
        envelopes = [envelope(sample("nx-cc", call, variant)) for call, variant in calls]
        if previous:
            with previous_release(monkeypatch):
                result = await store(pool, sources, *envelopes)
        else:
            result = await store(pool, sources, *envelopes)
        sent.update(call for call, _ in calls)
        return [e.revision for e in result.published]

    async def storing_while(
        pool: asyncpg.Pool, prefix: str, previous: bool, work: Awaitable[T]
    ) -> tuple[T, int]:
        """`work` done while `pool` keeps storing batches of a new call and a re-push of
        an old one; what it returned, and how many batches were stored meanwhile."""
        stop = asyncio.Event()

        async def keep_storing() -> int:
            n = 0
            while not stop.is_set():
                # A re-push of an old call by the previous release, of one of its own by
                # this one (the calls stored before keep their history while it partitions).
                again = f"old{200 + n % 800}" if previous else f"{prefix}{max(n - 1, 0)}"
                batch = ((f"{prefix}{n}", 0), (again, 0))
                try:
                    await send(pool, *batch, previous=previous)
                except Exception as exc:  # as a worker does: hold the batch, store it again
                    if not is_transient(exc):
                        raise
                    await asyncio.sleep(0.05)
                    continue
                n += 1
                await asyncio.sleep(0)
            return n

        writer = asyncio.create_task(keep_storing())
        try:
            done = await work
            await asyncio.sleep(0.2)
        finally:
            stop.set()
            stored = await writer
        return done, stored

    async with scratch_database("records_rolling") as url:
        with schema_up_to(11):
            await migrate(url)
        db = await asyncpg.connect(url)
        previous = await create_pool(url, 1, name=records_partitioning.PREVIOUS_WORKERS)
        try:
            calls = [f"old{n}" for n in range(1_000)]
            for start in range(0, len(calls), 250):
                await send(previous, *((c, 0) for c in calls[start : start + 250]), previous=True)
            await send(previous, *((c, 1) for c in calls[:100]), previous=True)

            # The previous release keeps storing new calls and re-pushes of old ones while
            # `cdrflow migrate` runs.
            applied, during = await storing_while(previous, "during", True, migrate(url))
            assert during > 0
            assert applied == [m.version for m in available() if m.version > 11]
            assert await kinds(db) == ["r", "r", "r"]  # the partitioning waits for them
            assert await records_partitioning.is_pending(db)
            assert await migrate(url) == []  # still connected: still pending
            assert await complete_partitioning(db) is False  # nor `cdrflow retention`
            status = PipelineStatus()
            await read_database(db, status, [])
            assert status.records_partitioning_pending  # `cdrflow status` says so
            assert await records_partitioning.is_pending(db)

            # This release's workers write beside them, on the plain tables.
            mine = await create_pool(url, 2)
            assert await send(mine, ("old5", 0), ("during0", 0), previous=False) == []
            assert await send(mine, ("old5", 1), previous=False) == []  # revision 2
            assert await send(mine, ("old500", 1), previous=False) == [2]
            assert await send(mine, ("mine0", 0), previous=False) == [1]
            # The previous release's, again: re-pushes of calls either release stored, and
            # a new one.
            assert (
                await send(previous, ("mine0", 0), ("old500", 1), ("old501", 0), previous=True)
                == []
            )
            assert await send(previous, ("late0", 0), previous=True) == [1]
            assert await send(mine, ("late0", 0), previous=False) == []
        finally:
            await previous.close()

        try:
            # They have stopped: the next run partitions, while this release's workers keep
            # storing new calls and re-pushes.
            before = await db.fetchrow(HISTORY)
            assert before is not None
            applied, rolling = await storing_while(mine, "rolling", False, migrate(url))
            assert applied == []
            assert rolling > 0
            assert await kinds(db) == ["p", "p", "p"]
            assert not await records_partitioning.is_pending(db)
            # Every revision stored before says the same.
            assert await db.fetchval(HISTORY_BEFORE_ROLLING) == before["digest"]
            trigger = await db.fetchval(
                "SELECT pg_get_triggerdef(oid) FROM pg_trigger"
                " WHERE tgname = 'call_records_1_write_single_revision'"
                " AND tgrelid = 'call_records'::regclass"
            )
            assert "keeps_single_revision" in trigger  # schema 14's form, made again

            # The previous release's statements could no longer write (why it waited).
            gone = await create_pool(url, 1, name="test-previous-after")
            try:
                with pytest.raises(asyncpg.InvalidColumnReferenceError):
                    await send(gone, ("old8", 0), previous=True)
            finally:
                await gone.close()

            again = [("old7", 0), ("old7", 1), ("old900", 0), ("during0", 0), ("mine0", 0)]
            assert await send(mine, *again[:1], previous=False) == []
            assert await send(mine, *again[1:], previous=False) == []
            assert await send(mine, ("late0", 0), ("new-after", 0), previous=False) == [1]
        finally:
            await mine.close()

        try:
            stored = {
                row["external_id"]: (row["delivery_count"], row["revision"])
                for row in await db.fetch(
                    "SELECT external_id, delivery_count, revision FROM call_records"
                )
            }
            assert {call: count for call, (count, _) in stored.items()} == dict(sent)
            assert await db.fetchval("SELECT count(*) FROM call_keys") == len(sent)
            assert await db.fetchval("SELECT count(*) FROM deliveries") == sum(sent.values())
            twice = await db.fetchval(
                "SELECT count(*) FROM (SELECT record_id, revision FROM record_history"
                " GROUP BY 1, 2 HAVING count(*) > 1) d"
            )
            assert twice == 0
            second = {call for call, (_, revision) in stored.items() if revision == 2}
            assert second == {f"old{n}" for n in range(100)} | {"old500"}
            # Every record's revisions in its history, their deliveries adding up.
            totals = await db.fetch(
                "SELECT external_id, sum(delivery_count) AS deliveries, count(*) AS revisions"
                " FROM record_history GROUP BY external_id"
            )
            assert {r["external_id"]: r["deliveries"] for r in totals} == dict(sent)
            assert {r["external_id"] for r in totals if r["revisions"] == 2} == second
        finally:
            await db.close()
