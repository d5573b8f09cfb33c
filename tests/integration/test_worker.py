"""Workers on the real RabbitMQ and PostgreSQL: the ledger under redelivery and
concurrency, faults (database down, crashes, poison), replay, outbox, tail."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import random
import signal
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika
import aiormq
import asyncpg
import pytest
from aio_pika.abc import AbstractChannel

from cdrflow.operations.replay_rejected import ReplaySelection, replay
from cdrflow.operations.tail import tail
from cdrflow.settings import Settings
from schemas.envelope import RawEnvelope
from schemas.jsoncodec import dumps, loads
from schemas.providers import Provider, Registry, default_registry
from schemas.providers.nxcloud_voice_report import NXCloudVoiceReport
from schemas.record import CallRecord, record_id_for
from schemas.sources import Source, Sources
from tests.support.broker import queue_depth, record_tap
from tests.support.ingress import ingress_client, push_all
from tests.support.proxy import database_behind_proxy
from tests.support.samples import Sample, envelope, record_validator, sample, simulated
from tests.support.sources import provider_source
from tests.support.waiting import eventually, one
from tests.support.workers import WorkerProcess, publish_envelopes, running_worker, stop_all
from workers.batch import Normalized
from workers.normalize import normalize_envelope
from workers.outbox import RecordPublisher
from workers.storage.database import DatabaseHold, create_pool
from workers.storage.writer import Store


async def count(db: asyncpg.Connection, sql: str, *args: Any) -> int:
    return int(await db.fetchval(sql, *args))


async def total_deliveries(db: asyncpg.Connection) -> int:
    return await count(db, "SELECT coalesce(sum(delivery_count), 0) FROM call_records")


# --- the ledger ----------------------------------------------------------------------


async def test_versions_of_one_record_in_one_batch_are_stored_in_rounds(
    settings: Settings, sources: Sources, channel: AbstractChannel, db: asyncpg.Connection
) -> None:
    t0 = datetime.now(UTC)
    first = sample("nx-cc", variant=0)
    changed = sample("nx-cc", first.external_id, variant=1)
    batch = [
        envelope(first, t0),
        envelope(first, t0 + timedelta(seconds=1)),
        envelope(changed, t0 + timedelta(seconds=2)),
    ]
    async with record_tap(channel, settings) as tap:
        await publish_envelopes(channel, settings, batch, per_message=3)
        async with running_worker(settings, sources):
            await tap.wait_for(2)
    row = await one(db, "SELECT * FROM call_records")
    assert (row["delivery_count"], row["revision"]) == (3, 2)
    assert row["labels"] == ["Intended customers", "High level"]  # the later content
    assert row["first_seen_at"] == t0
    assert row["last_seen_at"] == t0 + timedelta(seconds=2)
    record_id = row["record_id"]
    assert [m.message_id for m in tap.messages] == [f"{record_id}:1", f"{record_id}:2"]
    assert [loads(m.body)["delivery_count"] for m in tap.messages] == [2, 3]


async def test_a_late_older_version_counts_as_a_delivery_but_does_not_win(
    settings: Settings, sources: Sources, channel: AbstractChannel, db: asyncpg.Connection
) -> None:
    t0 = datetime.now(UTC)
    newer = sample("nx-dr", variant=1)
    older = sample("nx-dr", newer.external_id, variant=0)
    async with record_tap(channel, settings) as tap, running_worker(settings, sources):
        await publish_envelopes(channel, settings, [envelope(newer, t0)])
        await tap.wait_for(1)
        await publish_envelopes(channel, settings, [envelope(older, t0 - timedelta(hours=1))])
        barrier = sample("nx-voice")
        await publish_envelopes(channel, settings, [envelope(barrier)])
        await tap.wait_for(2)
    row = await one(db, "SELECT * FROM call_records WHERE source = 'nx-dr'")
    assert (row["delivery_count"], row["revision"], row["talk_seconds"]) == (2, 1, 11)
    assert row["first_seen_at"] == t0 - timedelta(hours=1)
    assert len(tap.of(str(row["record_id"]))) == 1


async def test_a_delivery_seen_before_is_not_counted_again(
    settings: Settings, sources: Sources, channel: AbstractChannel, db: asyncpg.Connection
) -> None:
    # The same raw envelope twice: what a redelivery after commit-but-before-ack looks like.
    item = envelope(sample("hw"))
    await publish_envelopes(channel, settings, [item])
    await publish_envelopes(channel, settings, [item])
    async with running_worker(settings, sources):
        assert await eventually(lambda: _queue_empty(channel, settings))
        assert await eventually(lambda: _has_rows(db, 1))
    row = await one(db, "SELECT * FROM call_records")
    assert (row["delivery_count"], row["revision"]) == (1, 1)
    assert await count(db, "SELECT count(*) FROM deliveries") == 1


async def _queue_empty(channel: AbstractChannel, settings: Settings) -> bool:
    return await queue_depth(channel, settings.raw_queue) == 0


async def _has_rows(db: asyncpg.Connection, rows: int, table: str = "call_records") -> bool:
    return await count(db, f"SELECT count(*) FROM {table}") >= rows


async def test_a_batch_variant_with_one_bad_report_keeps_the_others(
    settings: Settings, sources: Sources, channel: AbstractChannel, db: asyncpg.Connection
) -> None:
    body = dumps([{"voiceId": "b-1", "callDuration": 3}, {"type": 1}, {"voiceId": "b-2"}])
    item = Sample("nx-voice", "", "POST", body, "application/json")
    await publish_envelopes(channel, settings, [envelope(item)])
    async with running_worker(settings, sources):
        assert await eventually(lambda: _has_rows(db, 1, "rejected_callbacks"))
        assert await eventually(lambda: _has_rows(db, 2))
    rows = await db.fetch("SELECT external_id FROM call_records ORDER BY 1")
    assert [r["external_id"] for r in rows] == ["b-1", "b-2"]
    rejected = await one(db, "SELECT * FROM rejected_callbacks")
    assert (rejected["item"], rejected["reason"]) == (1, "missing_field")
    assert bytes(rejected["body"]) == body


async def test_a_source_unknown_to_the_worker_is_rejected_not_dropped(
    settings: Settings, sources: Sources, channel: AbstractChannel, db: asyncpg.Connection
) -> None:
    ghost = dataclasses.replace(envelope(sample("nx-cc")), source="ghost")
    await publish_envelopes(channel, settings, [ghost])
    async with running_worker(settings, sources):
        assert await eventually(lambda: _has_rows(db, 1, "rejected_callbacks"))
    assert await db.fetchval("SELECT reason FROM rejected_callbacks") == "unknown_source"


# --- many workers, crashes ---------------------------------------------------------


def duplicate_heavy_traffic(calls: int, seed: int) -> tuple[list[Sample], dict[str, int]]:
    """Callbacks of every provider, each pushed 1 to 4 times, in a shuffled order."""
    rng = random.Random(seed)
    providers = sorted(default_registry())
    pushes, expected = [], {}
    for n in range(calls):
        item = simulated(providers[n % len(providers)], f"call-{seed}-{n}")
        count = rng.randint(1, 4)
        expected[f"{item.source}/{item.external_id}"] = count
        pushes += [item] * count
    rng.shuffle(pushes)
    return pushes, expected


async def stored_counts(db: asyncpg.Connection) -> dict[str, int]:
    rows = await db.fetch("SELECT source, external_id, delivery_count FROM call_records")
    return {f"{r['source']}/{r['external_id']}": r["delivery_count"] for r in rows}


@pytest.mark.timeout(120)  # worker processes, and waits of up to a minute
async def test_two_worker_processes_on_duplicate_heavy_traffic(
    settings: Settings,
    sources: Sources,
    channel: AbstractChannel,
    db: asyncpg.Connection,
    tmp_path: Path,
) -> None:
    pushes, expected = duplicate_heavy_traffic(calls=240, seed=1)
    # small messages and a small prefetch, so that both workers get a share
    tuned = settings.with_(batch_size=40, batch_wait_ms=5, prefetch=2, coalesce_max_envelopes=4)
    workers = [WorkerProcess(tuned, tmp_path, f"w{i}").start() for i in range(2)]
    try:
        async with record_tap(channel, tuned) as tap, ingress_client(tuned, sources) as client:
            await push_all(client, pushes)

            async def all_counted() -> bool:
                return await total_deliveries(db) == len(pushes)

            assert await eventually(all_counted, timeout=60), [w.logged()[-2000:] for w in workers]
            await tap.wait_for(len(expected))
        for worker in workers:
            worker.signal(signal.SIGTERM)
            assert await worker.wait() == 0
    finally:
        stop_all(workers)
    assert await stored_counts(db) == expected  # no duplicate rows, none lost, exact counts
    published = [loads(m.body)["record_id"] for m in tap.messages]
    assert len(published) == len(set(published)) == len(expected)  # each record once
    for worker in workers:  # both really took part
        assert '"batch_stored"' in worker.logged()


@pytest.mark.timeout(120)  # worker processes, and waits of up to a minute
async def test_a_worker_killed_mid_batch_loses_nothing_and_counts_nothing_twice(
    settings: Settings,
    sources: Sources,
    channel: AbstractChannel,
    db: asyncpg.Connection,
    tmp_path: Path,
) -> None:
    pushes, expected = duplicate_heavy_traffic(calls=800, seed=2)
    tuned = settings.with_(batch_size=50, batch_wait_ms=5, prefetch=10, coalesce_max_envelopes=4)
    first = WorkerProcess(tuned, tmp_path, "first")
    second = WorkerProcess(tuned, tmp_path, "second")
    try:
        async with record_tap(channel, tuned) as tap:
            async with ingress_client(tuned, sources) as client:
                await push_all(client, pushes)
            first.start()
            assert await eventually(lambda: _has_rows(db, 1), timeout=30), first.logged()
            first.signal(signal.SIGKILL)
            assert await first.wait() == -signal.SIGKILL
            stored_at_kill = await total_deliveries(db)
            second.start()

            async def all_counted() -> bool:
                return await total_deliveries(db) == len(pushes)

            assert await eventually(all_counted, timeout=60), second.logged()[-3000:]

            async def all_published() -> bool:  # some may come twice (the relay after the kill)
                return len({loads(m.body)["record_id"] for m in tap.messages}) >= len(expected)

            assert await eventually(all_published, timeout=30)
    finally:
        stop_all([first, second])
    assert 0 < stored_at_kill < len(pushes)  # the kill did land mid-stream
    assert await stored_counts(db) == expected  # exactly once, exact ledger
    published = {loads(m.body)["record_id"] for m in tap.messages}
    stored = {str(r["record_id"]) for r in await db.fetch("SELECT record_id FROM call_records")}
    assert published == stored  # every record published at least once


@pytest.mark.timeout(120)  # worker processes, and waits of up to a minute
async def test_sigterm_finishes_the_work_in_hand_and_exits_cleanly(
    settings: Settings, channel: AbstractChannel, db: asyncpg.Connection, tmp_path: Path
) -> None:
    pushes, expected = duplicate_heavy_traffic(calls=200, seed=3)
    envelopes = [envelope(item) for item in pushes]
    worker = WorkerProcess(settings.with_(batch_size=20), tmp_path)
    try:
        await publish_envelopes(channel, settings, envelopes, per_message=1)
        worker.start()
        assert await eventually(lambda: _has_rows(db, 1), timeout=30)
        worker.signal(signal.SIGTERM)
        assert await worker.wait() == 0
    finally:
        worker.ensure_dead()
    assert '"worker_stopped"' in worker.logged()
    # what it took is stored, what it did not take is still queued: nothing lost
    stored = await total_deliveries(db)
    assert 0 < stored < len(envelopes)
    assert stored + await _envelopes_queued(channel, settings) == len(envelopes)
    assert set((await stored_counts(db)).keys()) <= set(expected)


async def _depth_is(channel: AbstractChannel, settings: Settings, depth: int) -> bool:
    return await queue_depth(channel, settings.raw_queue) == depth


async def _envelopes_queued(channel: AbstractChannel, settings: Settings) -> int:
    queue = await channel.get_queue(settings.raw_queue, ensure=False)
    total = 0
    while (message := await queue.get(fail=False)) is not None:
        total += len(loads(message.body)["envelopes"])
        await message.ack()
    return total


# --- faults -----------------------------------------------------------------------


async def test_while_the_database_is_down_the_batch_is_held_and_nothing_more_is_taken(
    settings: Settings, sources: Sources, channel: AbstractChannel, db: asyncpg.Connection
) -> None:
    items = [envelope(sample("nx-cc")) for _ in range(50)]
    tuning = {"batch_size": 10, "prefetch": 10, "batch_wait_ms": 5}
    async with (
        database_behind_proxy(settings, **tuning) as (proxy, via_proxy),
        running_worker(via_proxy, sources),
    ):
        await proxy.cut()
        await publish_envelopes(channel, settings, items, per_message=1)
        # the worker holds its one batch, unacknowledged, and has given back the rest
        assert await eventually(lambda: _queue_settled(channel, settings, below=50))
        held = 50 - await queue_depth(channel, settings.raw_queue)
        assert 1 <= held <= via_proxy.batch_size  # one batch's worth: 1 callback a message
        await asyncio.sleep(1.5)  # several retry rounds later: still holding, no more
        assert await queue_depth(channel, settings.raw_queue) == 50 - held
        assert await count(db, "SELECT count(*) FROM call_records") == 0
        await proxy.restore()
        assert await eventually(lambda: _has_rows(db, 50), timeout=30)
        assert await eventually(lambda: _queue_empty(channel, settings))
    assert await total_deliveries(db) == 50


async def _queue_settled(channel: AbstractChannel, settings: Settings, below: int) -> bool:
    """The worker has taken from the raw queue (it is under `below`) and takes no more."""
    before = await queue_depth(channel, settings.raw_queue)
    await asyncio.sleep(0.5)
    return before == await queue_depth(channel, settings.raw_queue) < below


async def test_a_message_that_keeps_crashing_its_consumer_is_parked_in_dead(
    settings: Settings, channel: AbstractChannel
) -> None:
    limited = settings.with_(delivery_limit=2)
    async with running_worker(limited, {}) as worker:  # declares the topology, then stops
        worker.stop()
    await publish_envelopes(channel, limited, [envelope(sample("nx-cc"))])
    attempts = 0
    for _ in range(10):  # a consumer that dies holding the message, again and again
        connection = await aio_pika.connect(limited.amqp_url)
        consumer = await connection.channel()
        queue = await consumer.get_queue(limited.raw_queue, ensure=False)
        message = await queue.get(fail=False)
        await connection.close()  # no ack: the broker takes it back
        if message is None:
            break
        attempts += 1
    assert attempts == limited.delivery_limit + 1
    assert await queue_depth(channel, limited.raw_queue) == 0
    # The broker dead-letters the message on its own time: on a loaded machine it can
    # reach `cdr.dead` a moment after it left the raw queue.
    dead_queue = await channel.get_queue(limited.dead_queue, ensure=False)
    parked: list[aio_pika.abc.AbstractIncomingMessage] = []

    async def dead_letter_arrived() -> bool:
        message = await dead_queue.get(fail=False)
        if message is not None:
            parked.append(message)
        return bool(parked)

    assert await eventually(dead_letter_arrived)
    dead = parked[0]
    assert loads(dead.body)["format"] == "cdrflow.raw/1"
    await dead.ack()


async def test_a_message_that_is_not_an_envelope_batch_is_parked_at_once(
    settings: Settings, sources: Sources, channel: AbstractChannel
) -> None:
    async with running_worker(settings, sources):
        await channel.default_exchange.publish(
            aio_pika.Message(b"this is not json", message_id="junk-1"),
            routing_key=settings.raw_queue,
        )
        dead_queue = await channel.get_queue(settings.dead_queue, ensure=False)

        async def parked() -> bool:
            return await queue_depth(channel, settings.dead_queue) == 1

        assert await eventually(parked)
    dead = await dead_queue.get(fail=False)
    assert dead is not None
    assert dead.body == b"this is not json"
    await dead.ack()


class PoisonousVoiceReport(NXCloudVoiceReport):
    """Makes records the database must refuse (a NUL in a text column: an integer beyond
    its column no longer is one, `CallRecord` moves it to `extra`)."""

    def normalize(self, payload: Mapping[str, Any], source: Source) -> CallRecord:
        record = super().normalize(payload, source)
        if record.external_id.startswith("poison"):
            return dataclasses.replace(record, caller="poison\x00")
        return record


async def test_a_record_the_database_refuses_is_isolated_and_the_rest_stored(
    settings: Settings, sources: Sources, channel: AbstractChannel, db: asyncpg.Connection
) -> None:
    registry = Registry(
        [
            PoisonousVoiceReport(),
            *(p for n, p in default_registry().items() if n != "nxcloud.voice_report"),
        ]
    )
    items = [envelope(sample("nx-voice", f"fine-{n}")) for n in range(7)]
    items.insert(3, envelope(sample("nx-voice", "poison-1")))
    await publish_envelopes(channel, settings, items, per_message=8)
    async with running_worker(settings, sources, registry):
        assert await eventually(lambda: _has_rows(db, 1, "rejected_callbacks"))
        assert await eventually(lambda: _has_rows(db, 7))
    assert await count(db, "SELECT count(*) FROM call_records") == 7
    rejected = await one(db, "SELECT * FROM rejected_callbacks")
    assert rejected["reason"] == "store_error"
    assert b"poison-1" in bytes(rejected["body"])


# --- replay ---------------------------------------------------------------------


class Broken:
    """A provider whose normalizer has a bug: everything else is the real module."""

    def __init__(self, inner: Provider) -> None:
        self.inner = inner
        self.name = inner.name
        self.methods = inner.methods
        self.default_timezone = inner.default_timezone
        self.signing_modes = inner.signing_modes
        self.books = inner.books
        self.configure = inner.configure
        self.volatile_fields = inner.volatile_fields
        self.answer = inner.answer
        self.authenticate = inner.authenticate
        self.parse = inner.parse
        self.simulate = inner.simulate
        self.documented = inner.documented

    def normalize(self, payload: Mapping[str, Any], source: Source) -> CallRecord:
        raise RuntimeError("a bug in the adapter")


def breaking(provider_name: str) -> Registry:
    registry = default_registry()
    return Registry(Broken(p) if n == provider_name else p for n, p in registry.items())


@pytest.mark.parametrize("provider", sorted(default_registry()))
async def test_replay_after_a_fix_turns_a_rejected_callback_into_a_record(
    settings: Settings,
    sources: Sources,
    channel: AbstractChannel,
    db: asyncpg.Connection,
    provider: str,
) -> None:
    item, source = simulated(provider), provider_source(provider)
    others = [simulated(p) for p in default_registry() if p != provider]
    async with (
        running_worker(settings, sources, breaking(provider)),
        ingress_client(settings, sources) as client,
    ):
        await push_all(client, [item, *others])
        assert await eventually(lambda: _has_rows(db, 1, "rejected_callbacks"))
        assert await eventually(lambda: _has_rows(db, len(others)))
    rejected = await one(db, "SELECT * FROM rejected_callbacks")
    assert (rejected["source"], rejected["reason"]) == (source, "internal_error")
    assert "a bug in the adapter" in rejected["message"]
    assert bytes(rejected["body"]) == item.body

    assert await replay(settings, ReplaySelection(reason="internal_error"), dry_run=True) == 1
    async with record_tap(channel, settings) as tap, running_worker(settings, sources):
        assert await replay(settings, ReplaySelection(source=source)) == 1
        await tap.wait_for(1)
    row = await one(db, "SELECT * FROM call_records WHERE source = $1", source)
    assert row["record_id"] == record_id_for(source, item.external_id)
    assert row["received_at"] == rejected["received_at"]  # the original delivery time
    assert row["delivery_count"] == 1
    after = await one(db, "SELECT * FROM rejected_callbacks")
    assert after["replayed_at"] is not None
    assert after["replay_count"] == 1
    assert after["resolved_at"] is not None
    assert after["record_id"] == row["record_id"]
    assert await replay(settings, ReplaySelection()) == 0  # nothing left open
    assert [m.message_id for m in tap.messages] == [f"{row['record_id']}:1"]


async def test_replaying_a_batch_request_does_not_count_its_stored_reports_again(
    settings: Settings, sources: Sources, channel: AbstractChannel, db: asyncpg.Connection
) -> None:
    body = dumps([{"voiceId": "r-1"}, {"voiceId": ""}, {"voiceId": "r-2"}])
    await publish_envelopes(channel, settings, [envelope(Sample("nx-voice", "", "POST", body))])
    async with running_worker(settings, sources):
        assert await eventually(lambda: _has_rows(db, 2))
        assert await eventually(lambda: _has_rows(db, 1, "rejected_callbacks"))
        assert await replay(settings, ReplaySelection(source="nx-voice")) == 1

        async def replayed() -> bool:  # the replay failed again: the row records it
            return bool(
                await db.fetchval("SELECT last_failed_at > rejected_at FROM rejected_callbacks")
            )

        assert await eventually(replayed)
    assert await total_deliveries(db) == 2  # r-1 and r-2 once each, not twice
    still_open = await one(db, "SELECT * FROM rejected_callbacks")
    assert still_open["resolved_at"] is None
    assert still_open["replay_count"] == 1


# --- outbox and tail ------------------------------------------------------------


async def test_records_committed_but_never_published_are_relayed(
    settings: Settings, sources: Sources, channel: AbstractChannel, db: asyncpg.Connection
) -> None:
    from cdrflow.amqp import BrokerLink

    pool = await create_pool(settings.database_url, 2)
    link = BrokerLink(settings.amqp_url, settings.topology(), name="test-relay")
    try:
        normalized = normalize_envelope(envelope(sample("nx-voice")), sources, default_registry())
        # committed, not published
        result = await Store(pool, DatabaseHold(), retry_max_seconds=1).write(normalized)
        assert len(result.published) == 1
        assert await count(db, "SELECT count(*) FROM outbox") == 1
        await link.start()
        publisher = RecordPublisher(
            link,
            pool,
            exchange=settings.records_exchange,
            confirm_timeout=5,
            grace_seconds=0,
            interval_seconds=1,
        )
        async with record_tap(channel, settings) as tap:
            assert await publisher.relay_once() == 1
            await tap.wait_for(1)
        assert [m.message_id for m in tap.messages] == [result.published[0].message_id]
        assert await count(db, "SELECT count(*) FROM outbox") == 0
    finally:
        await link.close()
        await pool.close()


async def test_tail_prints_each_record_as_one_json_line(
    settings: Settings, sources: Sources, channel: AbstractChannel, db: asyncpg.Connection
) -> None:
    out = io.StringIO()
    stopping, ready = asyncio.Event(), asyncio.Event()
    async with running_worker(settings, sources):
        printer = asyncio.create_task(
            tail(settings, "*.nxcloud.#", out, stopping, count=1, ready=ready)
        )
        await asyncio.wait_for(ready.wait(), 10)
        item = sample("nx-dr")
        await publish_envelopes(channel, settings, [envelope(sample("hw")), envelope(item)])
        assert await asyncio.wait_for(printer, 20) == 1
    (line,) = out.getvalue().splitlines()
    record = loads(line)
    assert record["external_id"] == item.external_id
    assert record["provider"] == "nxcloud"
    record_validator().validate(record)


async def test_the_worker_endpoint_reports_health_and_counts(
    settings: Settings, sources: Sources, channel: AbstractChannel, db: asyncpg.Connection
) -> None:
    import socket

    import aiohttp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    item = sample("nx-cc")
    bad = Sample("nx-cc", "", "POST", b"{", "application/json")
    async with (
        running_worker(settings.with_(worker_port=port), sources),
        aiohttp.ClientSession() as http,
    ):
        await publish_envelopes(channel, settings, [envelope(item), envelope(item), envelope(bad)])
        assert await eventually(lambda: _has_rows(db, 1, "rejected_callbacks"))
        assert await eventually(lambda: _has_rows(db, 1))
        async with http.get(f"http://127.0.0.1:{port}/readyz") as ready:
            assert ready.status == 200
        text = ""

        async def published() -> bool:  # records go out in the background, after the commit
            nonlocal text
            async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
                text = await response.text()
            return "cdrflow_worker_published_total 1.0" in text

        assert await eventually(published), text
    assert 'cdrflow_worker_deliveries_total{outcome="new_record"} 1.0' in text
    assert 'cdrflow_worker_deliveries_total{outcome="duplicate"} 1.0' in text
    assert 'cdrflow_worker_rejected_total{reason="unparseable_body"} 1.0' in text
    assert "cdrflow_worker_published_total 1.0" in text
    assert "cdrflow_worker_database_up 1.0" in text


async def test_a_callback_that_keeps_crashing_workers_parks_itself_alone(
    settings: Settings,
    sources: Sources,
    channel: AbstractChannel,
    db: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A bug outside the per-report guard: the batch fails, whatever the worker does. The
    # fault is injected; broker and database are real.
    real = normalize_envelope

    def crashing(envelope: RawEnvelope, *args: Any) -> Normalized:
        if b"poison" in envelope.body:
            raise RuntimeError("simulated crash")
        return real(envelope, *args)

    monkeypatch.setattr("workers.pipeline.normalize_envelope", crashing)
    limited = settings.with_(delivery_limit=3, coalesce_max_envelopes=4)
    good = [sample("nx-cc", f"good-{n}") for n in range(5)]
    poison = sample("nx-voice", "poison-1")
    await publish_envelopes(
        channel, limited, [envelope(good[0]), envelope(poison), envelope(good[1])], per_message=3
    )
    await publish_envelopes(channel, limited, [envelope(g) for g in good[2:]], per_message=3)
    async with running_worker(limited, sources):
        assert await eventually(lambda: _has_rows(db, 5), timeout=30)

        async def parked() -> bool:
            return await queue_depth(channel, limited.dead_queue) == 1

        assert await eventually(parked, timeout=30)
        assert await eventually(lambda: _queue_empty(channel, limited))
    stored = sorted(
        r["external_id"] for r in await db.fetch("SELECT external_id FROM call_records")
    )
    assert stored == sorted(g.external_id for g in good)  # every good neighbour stored
    assert await total_deliveries(db) == 5  # and counted once, despite the redeliveries
    dead = await (await channel.get_queue(limited.dead_queue, ensure=False)).get(fail=False)
    assert dead is not None
    parked_envelopes = loads(dead.body)["envelopes"]
    assert len(parked_envelopes) == 1  # the poison alone
    assert b"poison-1" in base64.b64decode(parked_envelopes[0]["body"])
    await dead.ack()


async def test_with_the_database_down_a_worker_holds_one_batch_of_callbacks_not_of_messages(
    settings: Settings, sources: Sources, channel: AbstractChannel, db: asyncpg.Connection
) -> None:
    quiet = [envelope(sample("nx-dr")) for _ in range(30)]  # one callback a message
    burst = [envelope(sample("nx-cc")) for _ in range(300)]  # ten callbacks a message
    tuning = {"batch_size": 20, "prefetch": 50, "batch_wait_ms": 5}
    async with (
        database_behind_proxy(settings, **tuning) as (proxy, tuned),
        running_worker(tuned, sources),
    ):
        await publish_envelopes(channel, settings, quiet, per_message=1)
        assert await eventually(lambda: _has_rows(db, 30))  # prefetch has grown to 50
        await proxy.cut()
        await publish_envelopes(channel, settings, burst, per_message=10)
        assert await eventually(lambda: _queue_settled(channel, settings, below=30))
        held_messages = 30 - await queue_depth(channel, settings.raw_queue)
        assert 1 <= held_messages * 10 <= tuned.batch_size + 10  # one batch of callbacks
        await proxy.restore()
        assert await eventually(lambda: _has_rows(db, 330), timeout=30)
    assert await total_deliveries(db) == 330


async def test_a_redelivered_message_is_processed_whole_when_it_cannot_be_split(
    settings: Settings,
    sources: Sources,
    channel: AbstractChannel,
    db: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    items = [sample("hw") for _ in range(3)]
    await publish_envelopes(channel, settings, [envelope(i) for i in items], per_message=3)
    connection = await aio_pika.connect(settings.amqp_url)  # a consumer that died holding it
    consumer = await connection.channel()
    held = await (await consumer.get_queue(settings.raw_queue, ensure=False)).get(fail=False)
    assert held is not None
    await connection.close()

    from cdrflow.amqp import BrokerLink, BrokerUnavailable

    real_publish = BrokerLink.publish

    async def raw_queue_unavailable(
        self: BrokerLink, message: Any, routing_key: str, **kw: Any
    ) -> None:
        if routing_key == settings.raw_queue:  # the split cannot be published
            raise BrokerUnavailable("simulated")
        await real_publish(self, message, routing_key, **kw)

    monkeypatch.setattr(BrokerLink, "publish", raw_queue_unavailable)
    async with running_worker(settings, sources):
        assert await eventually(lambda: _has_rows(db, 3))
        assert await eventually(lambda: _queue_empty(channel, settings))
    assert await queue_depth(channel, settings.dead_queue) == 0
    assert await total_deliveries(db) == 3


@pytest.mark.timeout(120)  # worker processes, and waits of up to a minute
async def test_under_steady_load_no_message_comes_back_with_a_delivery_count(
    settings: Settings, sources: Sources, channel: AbstractChannel, db: asyncpg.Connection
) -> None:
    # Messages of 1 and of 20 callbacks, in turns: what made the worker resize its prefetch
    # (and re-subscribe, handing deliveries in flight back to the queue) before.
    tuned = settings.with_(batch_size=40, prefetch=100, batch_wait_ms=5)
    rounds, expected = 6, 0
    async with running_worker(tuned, sources) as worker:
        for _ in range(rounds):
            small = [envelope(sample("nx-cc")) for _ in range(20)]
            large = [envelope(sample("nx-dr")) for _ in range(100)]
            await publish_envelopes(channel, tuned, small, per_message=1)
            await publish_envelopes(channel, tuned, large, per_message=20)
            expected += len(small) + len(large)
        assert await eventually(lambda: _has_rows(db, expected), timeout=60)
        redelivered = worker.metrics.registry.get_sample_value("cdrflow_worker_redelivered_total")
    assert redelivered == 0
    assert await total_deliveries(db) == expected


async def test_a_consumer_the_broker_cancels_is_re_established(
    settings: Settings, sources: Sources, channel: AbstractChannel, db: asyncpg.Connection
) -> None:
    async with running_worker(settings, sources) as worker:
        await publish_envelopes(channel, settings, [envelope(sample("nx-cc"))])
        assert await eventually(lambda: _has_rows(db, 1))
        # The queue deleted (by an operator, say): the broker cancels the subscription, and
        # the worker subscribes anew, declaring the queue again. (Declared again by someone
        # else at once, RabbitMQ 3.10 may not send the cancel at all.)
        await channel.queue_delete(settings.raw_queue)
        assert await eventually(lambda: _queue_exists(settings))
        assert await eventually(lambda: _published(channel, settings, envelope(sample("hw"))))
        assert await eventually(lambda: _has_rows(db, 2), timeout=30)
        assert worker.consuming.is_set()
    assert await count(db, "SELECT count(*) FROM call_records WHERE source = 'hw'") == 1


async def _published(channel: AbstractChannel, settings: Settings, item: RawEnvelope) -> bool:
    """Whether the broker took the publish: a quorum queue declared a moment ago may nack
    until its leader is elected (seen on a loaded machine), and a nacked message was not
    enqueued, so it is sent again."""
    try:
        await publish_envelopes(channel, settings, [item])
    except aiormq.exceptions.DeliveryError:
        return False
    return True


async def _queue_exists(settings: Settings) -> bool:
    connection = await aio_pika.connect(settings.amqp_url)
    try:
        channel = await connection.channel()
        await channel.declare_queue(settings.raw_queue, passive=True)
        return True
    except aio_pika.exceptions.ChannelNotFoundEntity:
        return False
    finally:
        await connection.close()
