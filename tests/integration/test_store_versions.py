"""Several versions of one record, through a worker on the real RabbitMQ and PostgreSQL:
inside one request, across the requests of one batch, and an earlier content pushed again
after later ones."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from aio_pika.abc import AbstractChannel

from cdrflow.settings import Settings
from schemas.jsoncodec import dumps, loads
from schemas.record import record_id_for
from schemas.sources import Sources
from tests.support.broker import record_tap
from tests.support.samples import Sample, envelope, sample
from tests.support.waiting import eventually, one
from tests.support.workers import publish_envelopes, running_worker


def voice_array(external_id: str, variants: list[int]) -> Sample:
    """One batch-variant voice report request: an array of versions of one call."""
    items = [loads(sample("nx-voice", external_id, v).body) for v in variants]
    first = sample("nx-voice", external_id)
    return Sample(first.source, external_id, first.method, dumps(items), first.content_type)


async def stored(db: asyncpg.Connection, external_id: str, deliveries: int) -> bool:
    count = await db.fetchval(
        "SELECT delivery_count FROM call_records WHERE external_id = $1", external_id
    )
    return bool(count == deliveries)


async def history(db: asyncpg.Connection, external_id: str) -> list[dict[str, Any]]:
    rows = await db.fetch(
        "SELECT revision, delivery_count, content->>'talk_seconds' AS talk"
        " FROM record_history WHERE external_id = $1 ORDER BY revision",
        external_id,
    )
    return [dict(row) for row in rows]


async def test_ten_thousand_versions_in_one_request_are_one_revision_and_one_message(
    settings: Settings, sources: Sources, channel: AbstractChannel, db: asyncpg.Connection
) -> None:
    versions = 10_000
    request = voice_array("many-versions", list(range(versions)))
    barrier = sample("nx-voice")
    async with record_tap(channel, settings) as tap, running_worker(settings, sources):
        await publish_envelopes(channel, settings, [envelope(request)])
        await publish_envelopes(channel, settings, [envelope(barrier)])
        assert await eventually(lambda: stored(db, barrier.external_id, 1), timeout=60)
        await tap.wait_for(2)
    row = await one(db, "SELECT * FROM call_records WHERE external_id = 'many-versions'")
    assert (row["delivery_count"], row["revision"]) == (versions, 1)
    assert row["talk_seconds"] == 13 + versions - 1  # the last item is the request's content
    assert [m.message_id for m in tap.of(str(row["record_id"]))] == [f"{row['record_id']}:1"]
    assert await history(db, "many-versions") == [
        {"revision": 1, "delivery_count": versions, "talk": str(13 + versions - 1)}
    ]


async def test_versions_from_several_requests_of_one_batch_end_on_the_newest(
    settings: Settings, sources: Sources, channel: AbstractChannel, db: asyncpg.Connection
) -> None:
    t0 = datetime.now(UTC)
    ext = "batch-versions"
    requests = [
        envelope(voice_array(ext, [0, 1]), t0),  # content 1, two deliveries
        envelope(voice_array(ext, [2]), t0 + timedelta(seconds=1)),
        envelope(voice_array(ext, [5, 1]), t0 + timedelta(seconds=2)),  # content 1 again
    ]
    async with record_tap(channel, settings) as tap, running_worker(settings, sources):
        await publish_envelopes(channel, settings, requests, per_message=3)
        assert await eventually(lambda: stored(db, ext, 5))
        await tap.wait_for(2)
    row = await one(db, "SELECT * FROM call_records WHERE external_id = $1", ext)
    assert row["talk_seconds"] == 14  # the newest request's content
    assert (row["delivery_count"], row["revision"]) == (5, 2)
    assert await history(db, ext) == [
        {"revision": 1, "delivery_count": 1, "talk": "15"},
        {"revision": 2, "delivery_count": 4, "talk": "14"},
    ]
    record_id = record_id_for("nx-voice", ext)
    assert [m.message_id for m in tap.of(str(record_id))] == [f"{record_id}:1", f"{record_id}:2"]


async def test_an_earlier_content_pushed_again_is_a_delivery_of_its_revision(
    settings: Settings, sources: Sources, channel: AbstractChannel, db: asyncpg.Connection
) -> None:
    t0 = datetime.now(UTC)
    ext = "late-repush"
    r1, r2, r3 = (sample("nx-voice", ext, variant) for variant in (0, 1, 2))
    pushes = [r1, r1, r1, r1, r2, r3, r1]
    async with record_tap(channel, settings) as tap, running_worker(settings, sources):
        for number, push in enumerate(pushes, start=1):
            at = t0 + timedelta(minutes=30 * number)
            await publish_envelopes(channel, settings, [envelope(push, at)])
            assert await eventually(lambda n=number: stored(db, ext, n))  # type: ignore[misc]
        barrier = sample("nx-voice")
        await publish_envelopes(channel, settings, [envelope(barrier)])
        assert await eventually(lambda: stored(db, barrier.external_id, 1))
        await tap.wait_for(4)
    row = await one(db, "SELECT * FROM call_records WHERE external_id = $1", ext)
    assert (row["delivery_count"], row["revision"], row["talk_seconds"]) == (7, 3, 15)
    assert row["last_seen_at"] == t0 + timedelta(minutes=30 * 7)
    assert await history(db, ext) == [
        {"revision": 1, "delivery_count": 5, "talk": "13"},
        {"revision": 2, "delivery_count": 1, "talk": "14"},
        {"revision": 3, "delivery_count": 1, "talk": "15"},
    ]
    assert len(tap.of(str(row["record_id"]))) == 3


async def test_a_revision_holds_the_record_columns_as_the_upgrade_backfill_wrote_them(
    settings: Settings, sources: Sources, channel: AbstractChannel, db: asyncpg.Connection
) -> None:
    """The worker builds a revision's content from the staged columns; migration 3 built
    the revisions of records stored before it from `call_records`. A record's shown
    revision must hold the same jsonb either way, for every provider, or `cdrflow history`
    would show a change where there was none."""
    requests = [sample(kind) for kind in ("nx-voice", "nx-cc", "nx-dr", "hw")]
    async with running_worker(settings, sources):
        await publish_envelopes(channel, settings, [envelope(r) for r in requests])
        for request in requests:
            assert await eventually(lambda r=request: stored(db, r.external_id, 1))  # type: ignore[misc]
    rows = await db.fetch(
        "SELECT c.source, h.content AS live, to_jsonb(c) - ARRAY['raw', 'received_at',"
        " 'stored_at', 'updated_at', 'first_seen_at', 'last_seen_at', 'delivery_count',"
        " 'revision', 'content_hash', 'content_received_at', 'content_ingest_id',"
        " 'content_item', 'bundle_id', 'original_item', 'payload_item'] AS backfill"
        " FROM call_records c JOIN record_history h USING (record_id)"
        " WHERE c.external_id = ANY($1::text[]) AND h.shown",
        [r.external_id for r in requests],
    )
    assert sorted(row["source"] for row in rows) == ["hw", "nx-cc", "nx-dr", "nx-voice"]
    for row in rows:
        live, backfill = loads(row["live"]), loads(row["backfill"])
        assert live["caller"] or live["callee"]  # a record's columns, not an empty object
        assert live == backfill, row["source"]


async def test_record_history_shows_every_revision_and_which_one_is_shown(
    settings: Settings, sources: Sources, channel: AbstractChannel, db: asyncpg.Connection
) -> None:
    first = sample("nx-voice")
    changed = sample("nx-voice", first.external_id, variant=1)
    async with running_worker(settings, sources):
        await publish_envelopes(channel, settings, [envelope(first)])
        assert await eventually(lambda: stored(db, first.external_id, 1))
        await publish_envelopes(channel, settings, [envelope(changed)])
        assert await eventually(lambda: stored(db, first.external_id, 2))
    rows = await db.fetch(
        "SELECT revision, shown, content, raw, delivery_count FROM record_history"
        " WHERE source = 'nx-voice' AND external_id = $1 ORDER BY revision",
        first.external_id,
    )
    assert [(r["revision"], r["shown"], r["delivery_count"]) for r in rows] == [
        (1, False, 1),
        (2, True, 1),
    ]
    shown = await one(db, "SELECT * FROM call_records WHERE external_id = $1", first.external_id)
    assert loads(rows[1]["content"])["talk_seconds"] == shown["talk_seconds"]
    assert loads(rows[0]["content"]) != loads(rows[1]["content"])
    assert loads(rows[0]["raw"]) == loads(first.body)
    assert loads(rows[1]["raw"]) == loads(changed.body)
    assert shown["raw"] is None  # in `originals`: record_history and record_payloads read it
