"""The parsing side of hostile input, against the real RabbitMQ and PostgreSQL: what one
callback costs to store and to read back stays a small multiple of its bytes, a value out
of a column's range is kept in `extra` rather than losing the record, and the same content
in another spelling is a delivery, not a revision."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import asyncpg
from aio_pika.abc import AbstractChannel

from cdrflow.settings import Settings
from schemas.sources import Sources
from tests.support.broker import record_tap
from tests.support.samples import Sample, envelope
from tests.support.waiting import eventually, one
from tests.support.workers import publish_envelopes, running_worker

MIB = 1 << 20
# What storing and reading back a callback may cost, per byte of its body: raw and extra
# both hold most of it, and jsonb writes ", " and ": " where the body may have "," and ":".
MAX_COST_PER_BYTE = 4


def number_bomb(number: str, voice_id: str) -> bytes:
    """A voice report of about 1 MiB, nearly all of it `number` repeated."""
    head, tail = f'{{"voiceId":"{voice_id}","rate":{number},"x":['.encode(), b"]}"
    count = (MIB - len(head) - len(tail)) // (len(number) + 1)
    return head + ",".join([number] * count).encode() + tail


async def test_a_mebibyte_of_exponents_costs_a_small_multiple_of_its_bytes(
    settings: Settings, sources: Sources, channel: AbstractChannel, db: asyncpg.Connection
) -> None:
    bodies = {f"bomb-{i}": number_bomb(n, f"bomb-{i}") for i, n in enumerate(["1e999", "1E-999"])}
    items = [
        envelope(Sample("nx-voice", ext, "POST", body, "application/json"))
        for ext, body in bodies.items()
    ]
    async with record_tap(channel, settings) as tap:
        await publish_envelopes(channel, settings, items, per_message=1)
        async with running_worker(settings, sources):
            await tap.wait_for(2)
    rows = await db.fetch(
        "SELECT c.external_id, length(p.raw::text) AS raw, length(extra::text) AS extra,"
        " length(c::text) AS stored FROM call_records c JOIN record_payloads p USING (record_id)"
    )
    assert sorted(r["external_id"] for r in rows) == sorted(bodies)
    for row in rows:
        size = len(bodies[row["external_id"]])
        assert row["raw"] <= MAX_COST_PER_BYTE * size, row
        assert row["extra"] <= MAX_COST_PER_BYTE * size, row
        assert row["stored"] <= 2 * MAX_COST_PER_BYTE * size, row
    assert len(tap.messages) == 2
    for message in tap.messages:
        assert len(message.body) <= MAX_COST_PER_BYTE * MIB
    assert await db.fetchval("SELECT count(*) FROM rejected_callbacks") == 0


async def test_a_dr_whose_billed_seconds_overflow_is_stored_with_the_value_in_extra(
    settings: Settings, sources: Sources, channel: AbstractChannel, db: asyncpg.Connection
) -> None:
    fields = {"messageid": "huge-size", "cycle": "60", "size": "999999999999", "duration": "7"}
    body = urlencode(fields).encode()
    item = envelope(Sample("nx-dr", "huge-size", "POST", body, "application/x-www-form-urlencoded"))
    async with record_tap(channel, settings) as tap:
        await publish_envelopes(channel, settings, [item])
        async with running_worker(settings, sources):
            await tap.wait_for(1)
    row = await one(db, "SELECT billed_seconds, talk_seconds, extra FROM call_records")
    assert (row["billed_seconds"], row["talk_seconds"]) == (None, 7)
    extra = json.loads(row["extra"])
    assert extra["billed_seconds"] == 60 * 999999999999
    assert extra["size"] == "999999999999"
    assert await db.fetchval("SELECT count(*) FROM rejected_callbacks") == 0


async def test_money_that_differs_only_in_trailing_zeros_is_a_delivery_not_a_revision(
    settings: Settings, sources: Sources, channel: AbstractChannel, db: asyncpg.Connection
) -> None:
    report = {"callSessionId": "zeros-1", "callDuration": 15, "cost": "0.01350"}
    t0 = datetime.now(UTC)
    spellings = [
        json.dumps(report),
        json.dumps({**report, "cost": "0.0135"}),
        json.dumps(dict(reversed(list(report.items()))), indent=2).replace("15", "15.0"),
    ]
    items = [
        envelope(Sample("nx-cc", "zeros-1", "POST", text.encode(), "application/json"), at)
        for text, at in zip(spellings, [t0 + timedelta(seconds=s) for s in range(3)], strict=True)
    ]
    async with record_tap(channel, settings) as tap, running_worker(settings, sources):
        for item in items:  # one batch each: every delivery meets the stored row
            await publish_envelopes(channel, settings, [item])

            async def counted(expected: int = items.index(item) + 1) -> bool:
                found = await db.fetchval("SELECT delivery_count FROM call_records")
                return bool(found == expected)

            assert await eventually(counted)
        await tap.wait_for(1)
    row = await one(
        db,
        "SELECT c.delivery_count, c.revision, p.raw"
        " FROM call_records c JOIN record_payloads p USING (record_id)",
    )
    assert (row["delivery_count"], row["revision"]) == (3, 1)
    assert json.loads(row["raw"])["cost"] == "0.01350"  # raw keeps what was first sent
    assert len(tap.messages) == 1
