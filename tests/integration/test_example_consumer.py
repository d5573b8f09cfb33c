"""deploy/examples/consumer.py against the pipeline: callbacks through the ingress and a
worker, the example consumer as its own process, its own schema. It keeps the highest
revision of each record, whatever arrives twice or late."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import aio_pika
import asyncpg
import pytest
from aio_pika.abc import AbstractChannel, AbstractConnection

from cdrflow.settings import Settings
from schemas.jsoncodec import dumps, loads
from schemas.record import record_id_for
from schemas.sources import Sources
from tests.support.broker import record_tap
from tests.support.env import scratch_database, unique
from tests.support.ingress import ingress_client, push_all
from tests.support.samples import sample
from tests.support.waiting import eventually
from tests.support.workers import running_worker

CONSUMER = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "consumer.py"


async def _consuming(connection: AbstractConnection, queue: str) -> bool:
    channel = await connection.channel()  # a passive declare of no queue closes its channel
    try:
        declared = await channel.declare_queue(queue, passive=True)
    except aio_pika.exceptions.ChannelNotFoundEntity:
        return False
    await channel.close()
    return bool(declared.declaration_result.consumer_count)


@pytest.mark.timeout(90)
async def test_the_example_consumer_keeps_the_highest_revision_of_every_record(
    settings: Settings, sources: Sources, channel: AbstractChannel, db: asyncpg.Connection
) -> None:
    queue = unique("example")
    schema = unique("example").replace(".", "_")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(CONSUMER),
        "--exchange",
        settings.records_exchange,
        "--queue",
        queue,
        "--binding",
        "acme.#",
        "--binding",
        "globex.nxcloud.#",
        "--schema",
        schema,
        env={
            **os.environ,
            "AMQP_URL": settings.amqp_url,
            "CONSUMER_DATABASE_URL": settings.database_url,
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        probe = await aio_pika.connect(settings.amqp_url)
        try:
            assert await eventually(lambda: _consuming(probe, queue), timeout=30)
        finally:
            await probe.close()

        first = [sample(source) for source in ("nx-voice", "nx-cc", "nx-dr", "hw")]
        revised = sample("nx-cc", first[1].external_id, variant=1)  # new content: revision 2
        cc_record_id = record_id_for("nx-cc", revised.external_id)
        async with (
            record_tap(channel, settings) as tap,
            running_worker(settings, sources),
            ingress_client(settings, sources) as client,
        ):
            await push_all(client, first)
            await tap.wait_for(4)
            await push_all(client, [revised, first[0]])  # a revision, and a plain re-push
            await tap.wait_for(5)
        # At least once: every message again. Out of order: a record's revision 2 reaching
        # the consumer before its revision 1 (made from the nx-cc revisions, new record_id).
        exchange = await channel.get_exchange(settings.records_exchange, ensure=False)
        for message in tap.messages:
            copy = aio_pika.Message(
                message.body, message_id=message.message_id, headers=message.headers
            )
            await exchange.publish(copy, routing_key=str(message.routing_key))
        late = str(uuid.uuid4())
        for message in sorted(tap.of(str(cc_record_id)), key=lambda m: -loads(m.body)["revision"]):
            body = {**loads(message.body), "record_id": late}
            out_of_order = aio_pika.Message(dumps(body), message_id=f"{late}:{body['revision']}")
            await exchange.publish(out_of_order, routing_key=str(message.routing_key))

        async def caught_up() -> bool:
            seen = await db.fetchval(f"SELECT count(*) FROM {schema}.seen_messages")
            return int(seen) >= len(tap.messages) + 2 and await _depth(channel, queue) == 0

        assert await eventually(caught_up, timeout=30)
        process.send_signal(signal.SIGTERM)  # it finishes what it holds, then exits
        _, err = await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode == 0, err.decode()
        assert await _depth(channel, queue) == 0  # so every message was acked: committed

        rows = await db.fetch(f"SELECT record_id, revision, record FROM {schema}.calls")
        stored = await db.fetch("SELECT record_id, revision FROM call_records")
        assert {(str(r["record_id"]), r["revision"]) for r in rows} == {
            (str(r["record_id"]), r["revision"]) for r in stored
        } | {(late, 2)}
        cc = next(r for r in rows if loads(r["record"])["external_id"] == revised.external_id)
        assert cc["revision"] == 2
        assert len(tap.messages) == 5
        assert await db.fetchval(f"SELECT count(*) FROM {schema}.seen_messages") == 5 + 2
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await db.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await channel.queue_delete(queue)


async def _depth(channel: AbstractChannel, queue: str) -> int:
    declared = await channel.declare_queue(queue, passive=True)
    return int(declared.declaration_result.message_count or 0)


async def test_the_example_consumer_creates_its_database_and_says_when_its_binding_is_quiet(
    settings: Settings,
) -> None:
    queue = unique("example")
    async with scratch_database("consumer", create=False) as database_url:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(CONSUMER),
            "--exchange",
            settings.records_exchange,
            "--queue",
            queue,
            "--binding",
            "acme.#",
            "--quiet-seconds",
            "0.5",
            env={
                **os.environ,
                "AMQP_URL": settings.amqp_url,
                "CONSUMER_DATABASE_URL": database_url,
            },
            stderr=subprocess.PIPE,
        )
        try:
            assert process.stderr is not None
            said = await asyncio.wait_for(_line_with(process.stderr, "no record in"), 30)
            assert "['acme.#']" in said
            assert "{tenant}.{provider}.{event}.{status}" in said
            connection = await asyncpg.connect(database_url)
            try:
                assert await connection.fetchval("SELECT count(*) FROM records_consumer.calls") == 0
            finally:
                await connection.close()
        finally:
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.wait(), 30)
            probe = await aio_pika.connect(settings.amqp_url)
            try:
                await (await probe.channel()).queue_delete(queue)
            finally:
                await probe.close()
    assert process.returncode == 0


async def _line_with(stream: asyncio.StreamReader, text: str) -> str:
    while line := (await stream.readline()).decode():
        if text in line:
            return line
    raise AssertionError(f"the consumer exited without logging {text!r}")
