"""`cdrflow reprocess` on the real PostgreSQL and RabbitMQ: records stored by a worker under
a wrong source setting (a call-center source read in +08:00 that is in +07:00) are derived
again from their original bytes once the sources file is fixed; nothing else moves."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aio_pika.abc import AbstractChannel

from cdrflow.cli import main
from cdrflow.operations.history import load_history
from cdrflow.operations.reprocess import ReprocessSelection, reprocess
from cdrflow.settings import Settings
from schemas.jsoncodec import loads
from schemas.providers import default_registry
from schemas.record import record_id_for
from schemas.sources import Sources
from schemas.sources_file import parse_sources
from tests.support.broker import record_tap
from tests.support.samples import envelope, sample
from tests.support.sources import ENVIRON, SOURCES_TOML
from tests.support.waiting import eventually
from tests.support.workers import publish_envelopes, running_worker
from workers.batch import Normalized
from workers.normalize import normalize_envelope
from workers.storage.database import create_pool
from workers.storage.transaction import write_batch

REGISTRY = default_registry()
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
WRONG_ZONE = 'timezone = "+08:00"\n\n[sources.nx-dr]'
FIXED_TOML = SOURCES_TOML.replace(WRONG_ZONE, WRONG_ZONE.replace("+08:00", "+07:00"))
SNAPSHOT = """
SELECT external_id, revision, content_hash, delivery_count, first_seen_at, last_seen_at,
    started_at, answered_at, ended_at, updated_at
FROM call_records WHERE source = $1 ORDER BY external_id
"""


def fixed_sources() -> Sources:
    assert FIXED_TOML != SOURCES_TOML
    return parse_sources(FIXED_TOML, origin="fixed", environ=ENVIRON, providers=REGISTRY)


async def snapshot(db: asyncpg.Connection, source: str) -> list[dict[str, Any]]:
    return [dict(row) for row in await db.fetch(SNAPSHOT, source)]


async def counts(db: asyncpg.Connection) -> tuple[int, int, int, int]:
    row = await db.fetchrow(
        "SELECT (SELECT count(*) FROM record_revisions), (SELECT count(*) FROM originals),"
        " (SELECT count(*) FROM outbox), (SELECT count(*) FROM deliveries)"
    )
    assert row is not None
    return (row[0], row[1], row[2], row[3])


async def test_reprocess_fixes_a_source_zone(
    settings: Settings,
    sources: Sources,
    channel: AbstractChannel,
    db: asyncpg.Connection,
) -> None:
    cc = [f"cc-{n}" for n in range(5)]
    dr = [f"dr-{n}" for n in range(3)]
    pushes = [envelope(sample("nx-cc", ext), T0) for ext in cc]
    pushes += [envelope(sample("nx-dr", ext), T0) for ext in dr]
    # A re-push in a later batch: a delivery of that record's one revision, still kept in
    # call_records alone (schema 14), like the others'.
    repush = envelope(sample("nx-cc", cc[0]), T0 + timedelta(minutes=30))

    def stored(count: int) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            found = await db.fetchval("SELECT sum(delivery_count) FROM call_records")
            waiting = await db.fetchval("SELECT count(*) FROM outbox")
            return bool(found == count and waiting == 0)

        return check

    async with running_worker(settings, sources):
        await publish_envelopes(channel, settings, pushes)
        assert await eventually(stored(len(pushes)))
        await publish_envelopes(channel, settings, [repush])
        assert await eventually(stored(len(pushes) + 1))
    cc_before, dr_before = await snapshot(db, "nx-cc"), await snapshot(db, "nx-dr")
    assert [r["revision"] for r in cc_before] == [1] * 5
    before = await counts(db)

    dry = await reprocess(
        settings.database_url, fixed_sources(), REGISTRY, ReprocessSelection("nx-cc", dry_run=True)
    )
    assert (dry.examined, dry.changed, dry.unchanged) == (5, 5, 0)
    assert await snapshot(db, "nx-cc") == cc_before
    assert await counts(db) == before

    async with running_worker(settings, sources), record_tap(channel, settings) as tap:
        done = await reprocess(
            settings.database_url, fixed_sources(), REGISTRY, ReprocessSelection("nx-cc")
        )
        assert (done.examined, done.changed, done.unchanged) == (5, 5, 0)

        async def published() -> bool:
            return len(tap.messages) >= len(cc)

        assert await eventually(published)
    ids = {
        row["external_id"]: row
        for row in await db.fetch(
            "SELECT external_id, record_id FROM call_records WHERE source = 'nx-cc'"
        )
    }
    assert sorted(str(m.message_id) for m in tap.messages) == sorted(
        f"{ids[ext]['record_id']}:2" for ext in cc
    )

    cc_after = await snapshot(db, "nx-cc")
    hour = timedelta(hours=1)
    for old, new in zip(cc_before, cc_after, strict=True):
        assert new["revision"] == 2
        assert new["content_hash"] != old["content_hash"]
        for column in ("started_at", "answered_at", "ended_at"):
            assert new[column] == old[column] + hour, column
        # No delivery: the ledger's counts and times are the provider's, not the reprocess's.
        for column in ("delivery_count", "first_seen_at", "last_seen_at"):
            assert new[column] == old[column], column
    assert cc_after[0]["delivery_count"] == 2
    assert await snapshot(db, "nx-dr") == dr_before
    revisions, _, _, deliveries = await counts(db)
    assert (revisions, deliveries) == (before[0] + 5 + 5, before[3])  # 5: the one-revision rows

    record_id = ids[cc[0]]["record_id"]
    history = await load_history(db, record_id)
    assert history is not None
    first, second = history.revisions
    assert first.reprocessed_at is None
    assert first.delivery_count == 2
    assert second.reprocessed_at is not None
    assert second.shown
    assert second.delivery_count == 0
    assert set(second.changed) == {"answered_at", "ended_at", "started_at"}
    assert "reprocessed at" in "\n".join(history.text_lines())
    assert second.origin == "push"

    again = await reprocess(
        settings.database_url, fixed_sources(), REGISTRY, ReprocessSelection("nx-cc")
    )
    assert (again.changed, again.unchanged) == (0, 5)
    assert await snapshot(db, "nx-cc") == cc_after


async def test_records_without_original_bytes_are_skipped(
    settings: Settings,
    sources: Sources,
    db: asyncpg.Connection,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    pool = await create_pool(settings.database_url, 1, name="test-reprocess")
    try:
        for ext in ("kept", "bare"):
            normalized = Normalized()
            normalized.extend(
                normalize_envelope(envelope(sample("nx-cc", ext), T0), sources, REGISTRY)
            )
            async with pool.acquire() as connection:
                await write_batch(connection, normalized)
    finally:
        await pool.close()
    # As a record stored before schema 8 (or whose bundle retention dropped): no bytes.
    await db.execute(
        "DELETE FROM originals WHERE bundle_id = (SELECT bundle_id FROM call_records"
        " WHERE external_id = 'bare')"
    )
    fixed = tmp_path / "sources.toml"
    fixed.write_text(FIXED_TOML)
    monkeypatch.setenv("CDRFLOW_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("CDRFLOW_SOURCES", str(fixed))

    code = await asyncio.to_thread(main, ["reprocess", "--source", "nx-cc", "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0
    assert "2 record(s) examined; 1 would change; 0 unchanged" in out
    assert "1 skipped: no original bytes" in out

    code = await asyncio.to_thread(main, ["reprocess", "--source", "nx-cc"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "1 changed" in out
    assert "1 skipped: no original bytes" in out
    rows = await db.fetch("SELECT external_id, revision FROM call_records ORDER BY external_id")
    revisions = {row["external_id"]: row["revision"] for row in rows}
    assert revisions == {"bare": 1, "kept": 2}

    later = T0 + timedelta(days=1)
    code = await asyncio.to_thread(
        main, ["reprocess", "--source", "nx-cc", "--since", later.isoformat()]
    )
    assert code == 0
    assert "0 record(s) examined" in capsys.readouterr().out


async def test_a_record_with_revisions_gets_the_next_one_and_keeps_the_others(
    settings: Settings, sources: Sources, db: asyncpg.Connection
) -> None:
    pool = await create_pool(settings.database_url, 1, name="test-reprocess")
    try:
        for variant, minutes in ((0, 0), (1, 30)):
            normalized = Normalized()
            stored = envelope(sample("nx-cc", "moved", variant), T0 + timedelta(minutes=minutes))
            normalized.extend(normalize_envelope(stored, sources, REGISTRY))
            async with pool.acquire() as connection:
                await write_batch(connection, normalized)
    finally:
        await pool.close()
    (before,) = await snapshot(db, "nx-cc")
    assert before["revision"] == 2
    kept = await db.fetch(
        "SELECT revision, content FROM record_history WHERE external_id = 'moved' ORDER BY revision"
    )

    done = await reprocess(
        settings.database_url, fixed_sources(), REGISTRY, ReprocessSelection("nx-cc")
    )
    assert (done.changed, done.unchanged) == (1, 0)
    (after,) = await snapshot(db, "nx-cc")
    assert after["revision"] == 3
    assert after["started_at"] == before["started_at"] + timedelta(hours=1)
    history = await db.fetch(
        "SELECT revision, content, reprocessed_at FROM record_history"
        " WHERE external_id = 'moved' ORDER BY revision"
    )
    assert [row["content"] for row in history[:2]] == [row["content"] for row in kept]
    assert [row["reprocessed_at"] is not None for row in history] == [False, False, True]
    # The new revision was read from revision 2's request: its labels, the new zone's times.
    third = loads(history[2]["content"])
    assert third["labels"] == loads(kept[1]["content"])["labels"]
    assert (await db.fetchval("SELECT count(*) FROM outbox")) == 3  # 2 stored + 1 reprocessed


async def test_a_push_holding_the_record_is_waited_for_and_reprocess_reads_its_content(
    settings: Settings, sources: Sources, db: asyncpg.Connection
) -> None:
    """A worker's batch holds the record's key (its first lock) and writes revision 2:
    reprocess waits, then derives revision 3 from revision 2's request, never a second
    revision 2 nor one from the request it would have read before the push."""
    pool = await create_pool(settings.database_url, 2, name="test-reprocess")
    try:
        first = Normalized()
        first.extend(normalize_envelope(envelope(sample("nx-cc", "raced"), T0), sources, REGISTRY))
        async with pool.acquire() as connection:
            await write_batch(connection, first)
        later = envelope(sample("nx-cc", "raced", 1), T0 + timedelta(minutes=30))
        push = Normalized()
        push.extend(normalize_envelope(later, sources, REGISTRY))
        async with pool.acquire() as worker, worker.transaction():
            await worker.execute(  # what a batch locks first: the record's key
                "SELECT 1 FROM call_keys WHERE record_id = $1 FOR UPDATE",
                record_id_for("nx-cc", "raced"),
            )
            task = asyncio.create_task(
                reprocess(
                    settings.database_url, fixed_sources(), REGISTRY, ReprocessSelection("nx-cc")
                )
            )
            await asyncio.sleep(0.5)
            assert not task.done()  # waiting for the record's lock
            await write_batch(worker, push)  # revision 2, in the same transaction
        done = await asyncio.wait_for(task, 10)
    finally:
        await pool.close()
    assert (done.changed, done.unchanged) == (1, 0)
    rows = await db.fetch(
        "SELECT revision, content, reprocessed_at FROM record_history"
        " WHERE external_id = 'raced' ORDER BY revision"
    )
    assert [row["revision"] for row in rows] == [1, 2, 3]
    assert [row["reprocessed_at"] is not None for row in rows] == [False, False, True]
    second, third = loads(rows[1]["content"]), loads(rows[2]["content"])
    assert third["labels"] == second["labels"] == ["Intended customers", "High level"]
