"""The outbox publishes a committed record once: the relay never takes the rows of a batch
whose own publisher is alive, however long the batch's transaction stayed open."""

from __future__ import annotations

import asyncio
from collections import Counter

import asyncpg
from aio_pika.abc import AbstractChannel

from cdrflow.amqp import BrokerLink
from cdrflow.settings import Settings
from schemas.providers import default_registry
from schemas.sources import Sources
from tests.support.broker import record_tap
from tests.support.samples import envelope, sample
from tests.support.waiting import eventually
from tests.support.workers import publish_envelopes, running_worker
from workers.normalize import normalize_envelope
from workers.outbox import RecordPublisher
from workers.storage.database import DatabaseHold, create_pool
from workers.storage.writer import Store


async def test_a_batch_held_open_past_the_grace_period_is_published_once(
    settings: Settings, sources: Sources, channel: AbstractChannel, db: asyncpg.Connection
) -> None:
    settings = settings.with_(outbox_grace_seconds=0.2, outbox_interval_seconds=0.02)
    held = sample("nx-voice")
    others = [sample("nx-voice") for _ in range(300)]
    async with record_tap(channel, settings) as tap, running_worker(settings, sources):
        await publish_envelopes(channel, settings, [envelope(held)])
        await tap.wait_for(1)
        blocker = await asyncpg.connect(settings.database_url)
        try:
            async with blocker.transaction():
                # The next batch waits on this row lock: its transaction stays open.
                await blocker.execute(
                    "SELECT 1 FROM call_records WHERE external_id = $1 FOR UPDATE",
                    held.external_id,
                )
                changed = sample("nx-voice", held.external_id, variant=1)
                batch = [envelope(changed), *(envelope(s) for s in others)]
                await publish_envelopes(channel, settings, batch, per_message=len(batch))
                await asyncio.sleep(1.5)  # well past the grace period
                assert await db.fetchval("SELECT count(*) FROM call_records") == 1
        finally:
            await blocker.close()
        await tap.wait_for(len(others) + 2)
        await asyncio.sleep(1)  # a second publish, if any, would come within the grace
    ids = Counter(m.message_id for m in tap.messages)
    assert len(ids) == len(others) + 2
    assert [m for m, n in ids.items() if n > 1] == []
    assert await db.fetchval("SELECT count(*) FROM outbox") == 0


async def test_rows_the_relay_took_are_not_published_again_by_their_batch(
    settings: Settings, sources: Sources, channel: AbstractChannel, db: asyncpg.Connection
) -> None:
    pool = await create_pool(settings.database_url, 2)
    link = BrokerLink(settings.amqp_url, settings.topology(), name="test-outbox")
    try:
        normalized = normalize_envelope(envelope(sample("nx-voice")), sources, default_registry())
        result = await Store(pool, DatabaseHold(), retry_max_seconds=1).write(normalized)
        await link.start()
        publisher = RecordPublisher(
            link,
            pool,
            exchange=settings.records_exchange,
            confirm_timeout=5,
            grace_seconds=0,  # as if the batch had been open longer than the grace period
            interval_seconds=1,
        )
        async with record_tap(channel, settings) as tap:
            relayed = await publisher.relay_once()
            published = await publisher.publish(result.published)
            assert await eventually(lambda: _outbox_empty(db))
            await tap.wait_for(2, timeout=2)
        assert (relayed, published) == (1, 0)
        assert [m.message_id for m in tap.messages] == [result.published[0].message_id]
    finally:
        await link.close()
        await pool.close()


async def _outbox_empty(db: asyncpg.Connection) -> bool:
    return bool(await db.fetchval("SELECT count(*) FROM outbox") == 0)
