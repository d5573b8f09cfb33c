"""`cdrflow dead list` and `cdrflow dead requeue` on the real RabbitMQ: what is parked and
why, moved back only once `cdr.raw` confirmed it, stored once by a worker."""

from __future__ import annotations

from pathlib import Path

import aio_pika
import asyncpg
import orjson
from aio_pika.abc import AbstractChannel

from cdrflow.amqp import declare
from cdrflow.operations.dead_letters import list_dead, move, requeue_dead
from cdrflow.settings import Settings
from schemas.envelope import RawEnvelope
from schemas.sources import Sources
from tests.support.broker import depth_becomes, queue_depth
from tests.support.processes import cdrflow, command_env
from tests.support.samples import envelope, sample
from tests.support.waiting import eventually, one
from tests.support.workers import publish_envelopes, running_worker


async def park(channel: AbstractChannel, settings: Settings, count: int) -> int:
    """Take `count` messages off the raw queue and reject them: RabbitMQ dead-letters each
    to `cdr.dead` with its own x-death headers, as when a worker parks one."""
    raw = await channel.get_queue(settings.raw_queue, ensure=False)
    before = await queue_depth(channel, settings.dead_queue)
    for _ in range(count):
        message = await raw.get(no_ack=False, timeout=5)
        assert message is not None
        await message.reject(requeue=False)

    async def parked() -> bool:
        return await queue_depth(channel, settings.dead_queue) == before + count

    assert await eventually(parked)
    return count


async def park_envelopes(
    channel: AbstractChannel, settings: Settings, envelopes: list[RawEnvelope]
) -> None:
    sent = await publish_envelopes(channel, settings, envelopes, per_message=len(envelopes))
    await park(channel, settings, sent)


async def park_garbage(channel: AbstractChannel, settings: Settings) -> None:
    await declare(channel, settings.topology())
    garbage = aio_pika.Message(b"\x00not a batch", message_id="garbage-1")
    await channel.default_exchange.publish(garbage, settings.raw_queue)
    await park(channel, settings, 1)


async def test_list_says_source_reason_and_first_bytes_and_leaves_every_message(
    settings: Settings, channel: AbstractChannel
) -> None:
    callback = sample("nx-cc")
    await park_envelopes(channel, settings, [envelope(callback)])

    listing = await list_dead(settings, 10)

    assert listing.depth == 1
    [letter] = listing.letters
    assert letter.sources == ("nx-cc",)
    assert letter.reason == "rejected"
    assert letter.queue == settings.raw_queue
    assert letter.parked_at is not None
    assert letter.envelopes == 1
    assert letter.first_bytes.startswith(callback.body[:20].decode())
    assert await depth_becomes(channel, settings.dead_queue, 1)  # listing took nothing


async def test_requeue_moves_a_parked_callback_back_and_a_worker_stores_it_once(
    settings: Settings, sources: Sources, channel: AbstractChannel, db: asyncpg.Connection
) -> None:
    stored = envelope(sample("nx-voice"))
    # Stored once already, then parked (a worker that crashed after its commit, say).
    await publish_envelopes(channel, settings, [stored])
    async with running_worker(settings, sources):

        async def first_stored() -> bool:
            return bool(await db.fetchval("SELECT count(*) FROM call_records"))

        assert await eventually(first_stored)
    fresh = envelope(sample("nx-cc"))
    await park_envelopes(channel, settings, [stored, fresh])
    await park_garbage(channel, settings)  # a third message, which no requeue can help

    report = await requeue_dead(settings, 0)

    assert report.error == ""
    assert len(report.moved) == 1  # one message of two callbacks
    assert report.callbacks == 2
    [garbage] = report.left
    assert garbage.message_id == "garbage-1"
    assert garbage.problem.startswith("message is not JSON")
    assert garbage.first_bytes == "\\x00not a batch"
    assert await depth_becomes(channel, settings.dead_queue, 1)  # the garbage stays
    async with running_worker(settings, sources):

        async def both_stored() -> bool:
            return int(await db.fetchval("SELECT count(*) FROM call_records")) == 2

        assert await eventually(both_stored)
        assert await eventually(lambda: _raw_empty(channel, settings))
    again = await one(
        db,
        "SELECT delivery_count, revision FROM call_records WHERE external_id = $1",
        sample_id(stored),
    )
    assert (again["delivery_count"], again["revision"]) == (1, 1)  # counted once


def sample_id(stored: RawEnvelope) -> str:
    return str(orjson.loads(stored.body)["voiceId"])


async def _raw_empty(channel: AbstractChannel, settings: Settings) -> bool:
    return await queue_depth(channel, settings.raw_queue) == 0


async def test_dry_run_and_limit_move_nothing_beyond_what_they_say(
    settings: Settings, channel: AbstractChannel
) -> None:
    for _ in range(3):
        await publish_envelopes(channel, settings, [envelope(sample("nx-dr"))])
    await park(channel, settings, 3)

    dry = await requeue_dead(settings, 0, dry_run=True)
    assert len(dry.moved) == 3
    assert await depth_becomes(channel, settings.dead_queue, 3)
    assert await depth_becomes(channel, settings.raw_queue, 0)

    limited = await requeue_dead(settings, 2)
    assert len(limited.moved) == 2
    assert await depth_becomes(channel, settings.dead_queue, 1)
    assert await depth_becomes(channel, settings.raw_queue, 2)


async def test_a_copy_the_broker_does_not_confirm_leaves_the_message_parked(
    settings: Settings, channel: AbstractChannel
) -> None:
    await park_envelopes(channel, settings, [envelope(sample("hw"))])
    connection = await aio_pika.connect(settings.amqp_url)
    try:
        confirming = await connection.channel(publisher_confirms=True, on_return_raises=True)
        # No queue of this name: the mandatory copy comes back unroutable.
        report = await move(
            confirming, settings.dead_queue, "no-such-queue", 0, dry_run=False, confirm_timeout=5
        )
    finally:
        await connection.close()

    assert report.moved == []
    assert "no-such-queue did not confirm" in report.error
    assert await depth_becomes(channel, settings.dead_queue, 1)


async def test_the_commands_print_what_is_parked_and_what_was_moved(
    settings: Settings, channel: AbstractChannel, tmp_path: Path
) -> None:
    await park_envelopes(channel, settings, [envelope(sample("nx-cc")), envelope(sample("nx-dr"))])
    env = command_env(settings, tmp_path)

    listed = cdrflow("dead", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    [shown, total] = listed.stdout.strip().splitlines()
    assert "\trejected x1\tnx-cc,nx-dr\t2 callback(s)\t" in shown
    assert total == f"1 message(s) in {settings.dead_queue}"

    as_json = cdrflow("dead", "list", "--json", env=env)
    assert orjson.loads(as_json.stdout)["sources"] == ["nx-cc", "nx-dr"]

    moved = cdrflow("dead", "requeue", env=env)
    assert moved.returncode == 0, moved.stderr
    assert moved.stdout.strip().splitlines()[-1] == (
        f"1 message(s) (2 callback(s)) moved back to {settings.raw_queue}"
    )
    assert await depth_becomes(channel, settings.dead_queue, 0)
    assert await depth_becomes(channel, settings.raw_queue, 1)
