"""The revision history: `cdrflow history`, and the upgrade of a database stored before
it existed (migration 3), on the real RabbitMQ and PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from aio_pika.abc import AbstractChannel

from cdrflow.cli import main
from cdrflow.operations.history import load_history
from cdrflow.settings import Settings
from schemas.envelope import BACKFILL
from schemas.jsoncodec import canonical_json, dumps
from schemas.providers import default_registry
from schemas.record import RECORD_COLUMNS
from schemas.sources import Sources
from tests.support.env import scratch_database
from tests.support.migrations import apply_up_to
from tests.support.samples import envelope, sample
from tests.support.waiting import eventually, one
from tests.support.workers import publish_envelopes, running_worker
from workers.batch import Delivery
from workers.normalize import normalize_envelope
from workers.storage.migrate import available, migrate


async def delivered(db: asyncpg.Connection, external_id: str, count: int) -> bool:
    found = await db.fetchval(
        "SELECT delivery_count FROM call_records WHERE external_id = $1", external_id
    )
    return bool(found == count)


async def history(arguments: list[str]) -> int:
    """`cdrflow history ...`, as a user runs it (it runs its own event loop)."""
    return await asyncio.to_thread(main, ["history", *arguments])


async def test_history_prints_every_revision_and_delivery(
    settings: Settings,
    sources: Sources,
    channel: AbstractChannel,
    db: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    t0 = datetime(2026, 3, 1, tzinfo=UTC)
    ext = "disputed"
    r1, r2 = sample("nx-voice", ext, 0), sample("nx-voice", ext, 1)
    pushes = [(r1, 0), (r1, 30), (r2, 60), (r1, 90)]
    async with running_worker(settings, sources):
        for number, (push, minutes) in enumerate(pushes, start=1):
            await publish_envelopes(
                channel, settings, [envelope(push, t0 + timedelta(minutes=minutes))]
            )
            assert await eventually(lambda n=number: delivered(db, ext, n))  # type: ignore[misc]
    monkeypatch.setenv("CDRFLOW_DATABASE_URL", settings.database_url)

    assert await history(["nx-voice", ext, "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    revisions = [line for line in lines if line["kind"] == "revision"]
    assert [(r["revision"], r["delivery_count"], r["shown"]) for r in revisions] == [
        (1, 3, False),
        (2, 1, True),
    ]
    assert revisions[0]["received_at"] == "2026-03-01T00:00:00Z"
    assert revisions[0]["last_seen_at"] == "2026-03-01T01:30:00Z"
    assert revisions[0]["changed"] == {}
    assert revisions[1]["changed"] == {"talk_seconds": {"from": 13, "to": 14}}
    deliveries = [line for line in lines if line["kind"] == "delivery"]
    assert len(deliveries) == 4

    record_id = revisions[0]["record_id"]
    assert await history(["--record-id", record_id]) == 0
    text = capsys.readouterr().out
    assert "2 revision(s), 4 delivery(ies), showing 2" in text
    assert "talk_seconds: 13 -> 14" in text
    assert await history(["nx-voice", "no-such-call"]) == 1


async def test_history_shows_each_revisions_origin_and_the_records_discrepancies(
    settings: Settings,
    sources: Sources,
    channel: AbstractChannel,
    db: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    t0 = datetime(2026, 3, 1, tzinfo=UTC)
    ext = "found-in-the-books"
    backfill = dataclasses.replace(envelope(sample("nx-dr", ext), t0), origin=BACKFILL)
    late_push = envelope(sample("nx-dr", ext), t0 + timedelta(minutes=5))
    async with running_worker(settings, sources):
        await publish_envelopes(channel, settings, [backfill])
        assert await eventually(lambda: delivered(db, ext, 1))
        await publish_envelopes(channel, settings, [late_push])
        assert await eventually(lambda: delivered(db, ext, 2))
    record_id = await db.fetchval("SELECT record_id FROM call_records WHERE external_id = $1", ext)
    found_at = datetime(2026, 3, 2, tzinfo=UTC)
    await db.executemany(  # as a reconciliation pass keeps them
        "INSERT INTO reconciliation_discrepancies"
        " (source, external_id, record_id, field, ours, theirs, found_at)"
        " VALUES ('nx-dr', $1, $2, $3, $4, $5, $6)",
        [
            (ext, record_id, "cost", "0.036", "0.072", found_at),
            (ext, record_id, "connected", "true", None, found_at),
        ],
    )
    monkeypatch.setenv("CDRFLOW_DATABASE_URL", settings.database_url)

    assert await history(["nx-dr", ext, "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    revisions = [line for line in lines if line["kind"] == "revision"]
    assert [(r["revision"], r["origin"], r["shown"]) for r in revisions] == [
        (1, "backfill", False),
        (2, "push", True),
    ]
    # The push says what the backfill said: only where it came from changed.
    assert revisions[1]["changed"] == {"origin": {"from": "backfill", "to": "push"}}
    discrepancies = [line for line in lines if line["kind"] == "discrepancy"]
    assert [(d["field"], d["ours"], d["theirs"]) for d in discrepancies] == [
        ("connected", "true", None),
        ("cost", "0.036", "0.072"),
    ]
    assert {d["found_at"] for d in discrepancies} == {"2026-03-02T00:00:00Z"}

    assert await history(["nx-dr", ext]) == 0
    text = capsys.readouterr().out
    assert "2 revision(s), 2 delivery(ies), showing 2 (push)" in text
    assert "revision 1  backfill  hash" in text
    assert "revision 2  push  hash" in text
    assert "the provider's books differ (2), kept, not applied:" in text
    assert "    cost: ours 0.036, theirs 0.072  (found 2026-03-02T00:00:00Z)" in text
    assert "    connected: ours true, theirs none" in text


async def test_an_upgraded_database_keeps_its_records_as_their_current_revision(
    settings: Settings, sources: Sources, channel: AbstractChannel
) -> None:
    stored = sample("hw")
    first = envelope(stored, datetime.now(UTC) - timedelta(hours=1))
    (delivery,) = normalize_envelope(first, sources, default_registry()).deliveries
    record = delivery.record
    # The content hash as schema version 2 computed it: over the payload, not the record.
    volatile = default_registry()["huawei.aicc_release"].volatile_fields
    payload_hash = hashlib.sha256(
        canonical_json({k: v for k, v in record.raw.items() if k not in volatile})
    ).digest()
    async with scratch_database("upgrade") as url:
        await apply_up_to(url, 2)
        await _insert_as_version_2(url, delivery, payload_hash)
        assert await migrate(url) == [m.version for m in available() if m.version > 2]
        again = settings.with_(database_url=url)
        connection = await asyncpg.connect(url)
        try:
            history = await one(connection, "SELECT * FROM record_revisions")
            assert (history["revision"], history["delivery_count"]) == (1, 1)
            assert bytes(history["content_hash"]) == delivery.content_hash
            content = json.loads(history["content"])
            assert (content["caller"], content["talk_seconds"]) == (record.caller, 6)
            assert "origin" not in content  # stored before records had one: a push
            found = await load_history(connection, record.record_id)
            assert found is not None
            assert [(r.origin, r.changed) for r in found.revisions] == [("push", {})]
            async with running_worker(again, sources):
                await publish_envelopes(channel, again, [envelope(stored)])
                assert await eventually(lambda: delivered(connection, stored.external_id, 2))
            row = await one(connection, "SELECT * FROM call_records")
            assert row["revision"] == 1  # the same content: a delivery, not a revision
            assert row["origin"] == "push"  # what migration 4 says of every stored record
            history = await one(connection, "SELECT * FROM record_revisions")
            assert history["delivery_count"] == 2
        finally:
            await connection.close()


async def _insert_as_version_2(url: str, delivery: Delivery, payload_hash: bytes) -> None:
    record = delivery.record
    columns = record.columns()
    columns["raw"] = dumps(record.raw).decode()
    columns["extra"] = dumps(record.extra).decode()
    columns["labels"] = list(record.labels)
    # Schema version 2 had no `origin` (migration 4 adds it, 'push' for every stored row).
    before_origin = [c for c in RECORD_COLUMNS if c != "origin"]
    values = [str(v) if isinstance(v, str) else v for v in (columns[c] for c in before_origin)]
    at = delivery.received_at
    names = [
        *before_origin,
        "received_at",
        "first_seen_at",
        "last_seen_at",
        "content_hash",
        "content_received_at",
        "content_ingest_id",
        "content_item",
    ]
    placeholders = ", ".join(f"${n}" for n in range(1, len(names) + 1))
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(
            f"INSERT INTO call_records ({', '.join(names)}) VALUES ({placeholders})",
            *values,
            at,
            at,
            at,
            payload_hash,
            at,
            delivery.ingest_id,
            delivery.item,
        )
        await connection.execute(
            "INSERT INTO deliveries VALUES ($1, $2, $3, $4)",
            delivery.ingest_id,
            delivery.item,
            record.record_id,
            at,
        )
    finally:
        await connection.close()
