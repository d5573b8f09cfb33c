"""`cdrflow republish`: stored records sent again to one consumer, exactly the time range
asked for, as the live pipeline sent them."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import aio_pika
import asyncpg
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from cdrflow.operations.republish import RepublishError, RepublishSelection, Target, republish
from cdrflow.settings import Settings
from schemas.jsoncodec import loads
from schemas.record import MESSAGE_TYPE
from schemas.sources import Sources
from tests.support.broker import record_tap
from tests.support.env import unique
from tests.support.samples import envelope, sample
from tests.support.waiting import eventually
from tests.support.workers import publish_envelopes, running_worker, settings_env

SOURCES = ("nx-voice", "nx-cc", "nx-dr", "hw")
BASE = datetime(2025, 3, 1, tzinfo=UTC)


async def _store(
    settings: Settings, sources: Sources, channel: AbstractChannel, db: asyncpg.Connection
) -> dict[str, AbstractIncomingMessage]:
    """Store 40 records through the worker, their current revisions an hour apart from
    BASE (record n at BASE + n hours). Returns the live messages by message_id."""
    items = [sample(SOURCES[n % len(SOURCES)]) for n in range(40)]
    async with record_tap(channel, settings) as tap, running_worker(settings, sources):
        await publish_envelopes(channel, settings, [envelope(i) for i in items])
        await tap.wait_for(40)
    live = {str(m.message_id): m for m in tap.messages}
    assert len(live) == 40
    for hour, item in enumerate(items):
        await db.execute(
            "UPDATE call_records SET updated_at = $1 WHERE source = $2 AND external_id = $3",
            BASE + timedelta(hours=hour),
            item.source,
            item.external_id,
        )
    return live


async def _drain(channel: AbstractChannel, queue: str) -> list[AbstractIncomingMessage]:
    target = await channel.get_queue(queue, ensure=False)
    found = []
    while (message := await target.get(fail=False, timeout=5)) is not None:
        await message.ack()
        found.append(message)
    return found


async def _consumer_queue(channel: AbstractChannel) -> str:
    name = unique("consumer")
    await channel.declare_queue(name, auto_delete=True)
    return name


async def _expected(db: asyncpg.Connection, since: datetime, until: datetime) -> set[str]:
    rows = await db.fetch(
        "SELECT record_id, revision FROM call_records WHERE updated_at >= $1 AND updated_at < $2",
        since,
        until,
    )
    return {f"{r['record_id']}:{r['revision']}" for r in rows}


async def test_republish_of_a_time_range_reaches_exactly_that_range_as_published_live(
    settings: Settings, sources: Sources, channel: AbstractChannel, db: asyncpg.Connection
) -> None:
    live = await _store(settings, sources, channel, db)
    queue = await _consumer_queue(channel)
    since, until = BASE + timedelta(hours=10), BASE + timedelta(hours=25)
    expected = await _expected(db, since, until)
    assert len(expected) == 15

    sent = await republish(settings, RepublishSelection(since, until), Target(queue=queue))

    assert sent == 15
    received = await _drain(channel, queue)
    assert {str(m.message_id) for m in received} == expected
    for message in received:
        original = live[str(message.message_id)]
        assert loads(message.body) == loads(original.body)
        assert message.headers == original.headers
        assert message.content_type == "application/json"
        assert message.type == original.type == MESSAGE_TYPE
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT


async def test_republish_by_source_and_tenant_to_one_consumers_routing_key(
    settings: Settings, sources: Sources, channel: AbstractChannel, db: asyncpg.Connection
) -> None:
    await _store(settings, sources, channel, db)
    queue = await _consumer_queue(channel)
    exchange = await channel.get_exchange(settings.records_exchange, ensure=False)
    target = await channel.get_queue(queue, ensure=False)
    await target.bind(exchange, routing_key="republish.billing")

    selection = RepublishSelection(BASE, None, tenant="acme", source="nx-cc")
    sent = await republish(settings, selection, Target(routing_key="republish.billing"))

    expected = await db.fetch(
        "SELECT record_id, revision FROM call_records WHERE tenant = 'acme' AND source = 'nx-cc'"
    )
    assert sent == len(expected) == 10
    received = await _drain(channel, queue)
    assert {str(m.message_id) for m in received} == {
        f"{r['record_id']}:{r['revision']}" for r in expected
    }
    assert {loads(m.body)["source"] for m in received} == {"nx-cc"}


async def test_republish_refuses_targets_that_would_lose_or_spread_records(
    settings: Settings, sources: Sources, channel: AbstractChannel, db: asyncpg.Connection
) -> None:
    await _store(settings, sources, channel, db)
    everything = RepublishSelection(BASE)
    with pytest.raises(RepublishError, match="does not exist"):
        await republish(settings, everything, Target(queue=unique("missing")))
    with pytest.raises(RepublishError, match="did not take"):  # nothing binds it: returned
        await republish(settings, everything, Target(routing_key="republish.nobody"))
    with pytest.raises(RepublishError, match="shape of a live record"):
        Target(routing_key="acme.nxcloud.voice_dr.answered")


async def test_republish_as_a_command_says_what_it_sent(
    settings: Settings, sources: Sources, channel: AbstractChannel, db: asyncpg.Connection
) -> None:
    await _store(settings, sources, channel, db)
    queue = await _consumer_queue(channel)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cdrflow.cli",
        "republish",
        "--since",
        "2025-03-01T05:00:00Z",
        "--until",
        "2025-03-01T07:00:00",
        "--to-queue",
        queue,
        env={**os.environ, **settings_env(settings)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err
    assert out.decode().strip() == f"2 record(s) republished to queue {queue}"
    assert await eventually(lambda: _depth_is(channel, queue, 2))


async def _depth_is(channel: AbstractChannel, queue: str, depth: int) -> bool:
    declared = await channel.declare_queue(queue, passive=True)
    return declared.declaration_result.message_count == depth
