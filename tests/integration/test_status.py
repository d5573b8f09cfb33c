"""`cdrflow status` on the real RabbitMQ and PostgreSQL: the figures a worker's traffic
leaves, and exit 1 for each thing that needs a human."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aio_pika
import asyncpg
import orjson
from aio_pika.abc import AbstractChannel

from cdrflow.amqp import declare
from cdrflow.operations.pipeline_status import gather_status, outbox_limit, render
from cdrflow.settings import Settings
from schemas.sources import Sources
from tests.support.env import scratch_database
from tests.support.processes import cdrflow, command_env
from tests.support.samples import envelope, sample
from tests.support.waiting import eventually
from tests.support.workers import publish_envelopes, running_worker
from workers.storage.migrate import LATEST, available, migrate


async def test_a_healthy_pipeline_says_what_each_source_sent_and_exits_0(
    settings: Settings,
    sources: Sources,
    channel: AbstractChannel,
    db: asyncpg.Connection,
    tmp_path: Path,
) -> None:
    callbacks = [envelope(sample("nx-cc")) for _ in range(3)] + [envelope(sample("hw"))]
    await publish_envelopes(channel, settings, callbacks)
    async with running_worker(settings, sources):

        async def stored() -> bool:
            return int(await db.fetchval("SELECT count(*) FROM call_records")) == 4

        assert await eventually(stored)

        async def published() -> bool:
            return int(await db.fetchval("SELECT count(*) FROM outbox")) == 0

        assert await eventually(published)
        result = await asyncio.to_thread(
            cdrflow, "status", "--json", env=command_env(settings, tmp_path)
        )

    assert result.returncode == 0, result.stdout + result.stderr
    status = orjson.loads(result.stdout)
    assert status["raw_queue"] == {"name": settings.raw_queue, "messages": 0, "consumers": 1}
    assert status["dead_queue"]["messages"] == 0
    assert status["problems"] == []
    by_source = {s["source"]: s for s in status["sources"]}
    assert by_source["nx-cc"]["last_hour"] == 3
    assert by_source["hw"]["last_hour"] == 1
    assert by_source["nx-dr"] == {"source": "nx-dr", "last_callback": None, "last_hour": 0}
    assert status["stored_per_second"] > 0
    assert status["schema_version"] == status["latest_schema_version"]


async def test_no_worker_a_dead_letter_and_a_late_outbox_row_each_need_a_human(
    settings: Settings, channel: AbstractChannel, db: asyncpg.Connection, tmp_path: Path
) -> None:
    await declare(channel, settings.topology())
    await channel.default_exchange.publish(
        aio_pika.Message(b"parked", message_id="m1"), settings.dead_queue
    )
    await db.execute(
        "INSERT INTO outbox (record_id, revision, routing_key, body, created_at)"
        " VALUES (gen_random_uuid(), 1, 'a.b.c.d', '{}', now() - interval '10 minutes')"
    )
    await db.execute(
        "INSERT INTO rejected_callbacks (ingest_id, item, source, tenant, provider,"
        " received_at, reason, message, request, body)"
        " VALUES (gen_random_uuid(), 0, 'nx-cc', 't', 'p', now(), 'unparseable_body', 'm',"
        " '{}', '')"
    )

    async def parked() -> bool:
        status = await gather_status(settings, [])
        return status.dead is not None and status.dead.messages == 1

    assert await eventually(parked)
    status = await gather_status(settings, [])
    problems = status.problems(outbox_limit(settings))
    assert problems[0] == f"no consumer on {settings.raw_queue}: no worker is running"
    assert problems[1] == f"1 message(s) parked in {settings.dead_queue}: `cdrflow dead list`"
    assert problems[2].startswith("outbox rows waiting 6")  # 600 s and a little
    assert len(problems) == 3
    assert status.open_rejections == {"unparseable_body": 1}
    screen = render(status, outbox_limit(settings))
    assert "rejections    unparseable_body 1" in screen
    assert "NEEDS A HUMAN: no consumer on" in screen

    result = await asyncio.to_thread(cdrflow, "status", env=command_env(settings, tmp_path))
    assert result.returncode == 1
    assert "NEEDS A HUMAN: 1 message(s) parked" in result.stdout


async def test_a_database_behind_the_release_needs_a_human(settings: Settings) -> None:
    async with scratch_database("status") as url:
        await migrate(url)
        connection = await asyncpg.connect(url)
        try:
            await connection.execute("DELETE FROM cdrflow_migrations WHERE version = $1", LATEST)
        finally:
            await connection.close()
        status = await gather_status(settings.with_(database_url=url), [])

    previous = available()[-2].version  # version numbers may have gaps
    assert status.schema_version == previous
    assert status.problems(outbox_limit(settings))[-1] == (
        f"database schema version {previous}, this release needs {LATEST}: `cdrflow migrate`"
    )
