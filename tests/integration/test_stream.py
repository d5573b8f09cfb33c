"""The records stream and `cdrflow tail`: a consumer that starts late reads everything the
stream keeps; tail waits quietly on an idle exchange."""

from __future__ import annotations

import asyncio
import io
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
import asyncpg
import pytest
from aio_pika.abc import AbstractChannel

from cdrflow.amqp import declare
from cdrflow.operations.tail import StreamStart, TopicPattern, tail
from cdrflow.settings import Settings
from schemas.jsoncodec import dumps, loads
from schemas.sources import Sources
from tests.support.samples import envelope, record_validator, sample
from tests.support.waiting import eventually
from tests.support.workers import publish_envelopes, running_worker

SOURCES = ("nx-voice", "nx-cc", "nx-dr", "hw")


def _record(record_id: str, tenant: str = "acme") -> bytes:
    return dumps({"record_id": record_id, "tenant": tenant})


async def _publish(
    channel: AbstractChannel,
    settings: Settings,
    body: bytes,
    key: str,
    when: datetime | None = None,
) -> None:
    exchange = await channel.get_exchange(settings.records_exchange, ensure=False)
    await exchange.publish(aio_pika.Message(body, timestamp=when), routing_key=key)


async def _stored(db: asyncpg.Connection, count: int) -> bool:
    return int(await db.fetchval("SELECT count(*) FROM call_records")) >= count


async def test_tail_waits_on_an_idle_exchange_then_prints_the_next_record(
    settings: Settings, channel: AbstractChannel
) -> None:
    out = io.StringIO()
    stopping, ready = asyncio.Event(), asyncio.Event()
    printer = asyncio.create_task(tail(settings, "acme.#", out, stopping, count=1, ready=ready))
    await asyncio.wait_for(ready.wait(), 10)
    await asyncio.sleep(3)  # idle: nothing published for several seconds
    assert not printer.done(), printer  # still waiting, not crashed
    await _publish(channel, settings, _record("r1"), "acme.nxcloud.voice_dr.answered")
    assert await asyncio.wait_for(printer, 10) == 1
    assert out.getvalue() == _record("r1").decode() + "\n"


async def test_tail_on_the_stream_waits_for_new_records_and_stops_when_asked(
    settings: Settings, channel: AbstractChannel
) -> None:
    out = io.StringIO()
    stopping, ready = asyncio.Event(), asyncio.Event()
    printer = asyncio.create_task(
        tail(settings, "#", out, stopping, ready=ready, start=StreamStart("next"))
    )
    await asyncio.wait_for(ready.wait(), 10)
    await asyncio.sleep(2)
    await _publish(channel, settings, _record("r1"), "acme.nxcloud.voice_dr.answered")
    assert await eventually(lambda: _printed(out, 1))
    stopping.set()
    assert await asyncio.wait_for(printer, 10) == 1


async def _printed(out: io.StringIO, lines: int) -> bool:
    return len(out.getvalue().splitlines()) >= lines


@pytest.mark.timeout(90)
async def test_a_consumer_that_starts_after_1000_records_reads_all_of_them(
    settings: Settings, sources: Sources, channel: AbstractChannel, db: asyncpg.Connection
) -> None:
    items = [sample(SOURCES[n % len(SOURCES)]) for n in range(1000)]
    async with running_worker(settings, sources):
        await publish_envelopes(channel, settings, [envelope(i) for i in items], per_message=50)
        assert await eventually(lambda: _stored(db, 1000), timeout=60)
        assert await eventually(lambda: _outbox_empty(db), timeout=30)
    # The worker is gone; nobody was bound to cdr.records but the stream. Delivery is at
    # least once (a record may be in the stream twice), so the consumer dedups on message_id.
    out, stopping = io.StringIO(), asyncio.Event()
    reader = asyncio.create_task(tail(settings, "#", out, stopping, start=StreamStart("first")))
    assert await eventually(lambda: _distinct(out, 1000), timeout=60)
    stopping.set()
    await asyncio.wait_for(reader, 10)
    records = [loads(line) for line in out.getvalue().splitlines()]
    stored = {str(r["record_id"]) for r in await db.fetch("SELECT record_id FROM call_records")}
    assert {r["record_id"] for r in records} == stored
    assert {(r["source"], r["external_id"]) for r in records} == {
        (i.source, i.external_id) for i in items
    }
    for record in records[:20]:
        record_validator().validate(record)


async def _distinct(out: io.StringIO, count: int) -> bool:
    lines = out.getvalue().splitlines()
    return len({(r["record_id"], r["revision"]) for r in map(loads, lines)}) >= count


async def _outbox_empty(db: asyncpg.Connection) -> bool:
    return int(await db.fetchval("SELECT count(*) FROM outbox")) == 0


async def test_tail_from_the_stream_filters_by_binding_and_starts_at_a_point(
    settings: Settings, channel: AbstractChannel
) -> None:
    await declare(channel, settings.topology())
    old = datetime.now(UTC) - timedelta(hours=2)
    now = datetime.now(UTC)
    published = [
        ("acme.nxcloud.voice_dr.answered", "a1", old),
        ("globex.huawei.aicc_release.busy", "g1", old),
        ("acme.huawei.aicc_release.failed", "a2", now),
        ("globex.nxcloud.voice_report.failed", "g2", now),
        ("acme.nxcloud.voice_report.answered", "a3", now),
    ]
    for key, record_id, when in published:
        await _publish(channel, settings, _record(record_id), key, when)

    async def read(binding: str, start: StreamStart, count: int) -> list[str]:
        out = io.StringIO()
        await asyncio.wait_for(
            tail(settings, binding, out, asyncio.Event(), count, None, start), 20
        )
        return [loads(line)["record_id"] for line in out.getvalue().splitlines()]

    assert await read("acme.#", StreamStart("first"), 3) == ["a1", "a2", "a3"]
    assert await read("*.*.*.failed", StreamStart("first"), 2) == ["a2", "g2"]
    assert await read("#", StreamStart(2), 3) == ["a2", "g2", "a3"]
    since = now - timedelta(minutes=1)
    assert await read("#", StreamStart(since), 3) == ["a2", "g2", "a3"]


async def test_tail_shows_each_records_offset_and_reads_again_from_one(
    settings: Settings, channel: AbstractChannel
) -> None:
    await declare(channel, settings.topology())
    for record_id in ("o1", "o2", "o3"):
        await _publish(channel, settings, _record(record_id), "acme.nxcloud.voice_dr.answered")

    async def read(start: StreamStart, count: int) -> list[dict[str, Any]]:
        out = io.StringIO()
        await asyncio.wait_for(
            tail(settings, "#", out, asyncio.Event(), count, None, start, show_offset=True), 20
        )
        return [loads(line) for line in out.getvalue().splitlines()]

    lines = await read(StreamStart("first"), 3)
    assert [line["record"]["record_id"] for line in lines] == ["o1", "o2", "o3"]
    offsets = [line["offset"] for line in lines]
    assert offsets == sorted(offsets)
    assert len(set(offsets)) == 3
    again = await read(StreamStart(offsets[1]), 2)
    assert [(line["offset"], line["record"]["record_id"]) for line in again] == [
        (offsets[1], "o2"),
        (offsets[2], "o3"),
    ]


def test_topic_patterns_match_as_amqp_topic_bindings_do() -> None:
    key = "acme.nxcloud.voice_dr.answered"
    for pattern in ("#", "acme.#", "*.nxcloud.#", "*.*.*.answered", "acme.#.answered", key):
        assert TopicPattern(pattern).matches(key), pattern
    for pattern in ("globex.#", "*.*.answered", "*.*.*.*.*", "acme.*", "#.failed"):
        assert not TopicPattern(pattern).matches(key), pattern
    assert TopicPattern("#.answered").matches("answered")  # '#' is zero or more words
    assert TopicPattern("*.*.*.*").matches(key)
