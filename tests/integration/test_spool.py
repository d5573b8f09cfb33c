"""The ingress's spool against the real RabbitMQ and PostgreSQL: callbacks answered while
the broker is out of reach are stored exactly once when it is back, a torn record left by
SIGKILL costs only itself, and a spooled batch sent twice is counted once."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from json import loads
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from aio_pika.abc import AbstractChannel
from aio_pika.exceptions import DeliveryError

from cdrflow.amqp import BrokerLink, declare, raw_message
from cdrflow.settings import Settings
from ingress.drainer import SpoolDrainer
from ingress.ingress_metrics import IngressMetrics
from ingress.spool import Spool
from ingress.spool_format import MAGIC, encode_record, scan_records
from schemas.sources import Sources
from tests.support.broker import queue_depth, take_envelopes
from tests.support.ingress import IngressClient, ingress_client, push_all
from tests.support.processes import cdrflow
from tests.support.proxy import TcpProxy, broker_behind_proxy
from tests.support.samples import Sample, envelope, sample
from tests.support.sources import ENVIRON, SOURCES_TOML, callback_path
from tests.support.waiting import eventually
from tests.support.workers import running_worker, settings_env


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


async def scrape(client: IngressClient) -> str:
    return await (await client.get("/metrics")).text()


async def stored(db: asyncpg.Connection, source: str) -> dict[str, int]:
    rows = await db.fetch(
        "SELECT external_id, delivery_count FROM call_records WHERE source = $1", source
    )
    return {r["external_id"]: r["delivery_count"] for r in rows}


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("seg-*.log"))


async def test_with_the_broker_out_of_reach_callbacks_are_spooled_then_stored_once(
    settings: Settings, sources: Sources, db: asyncpg.Connection
) -> None:
    proxy = TcpProxy("127.0.0.1", 5672)
    await proxy.start()
    via_proxy = settings.with_(amqp_url=f"amqp://guest:guest@127.0.0.1:{proxy.port}/")
    during = [sample("nx-cc") for _ in range(60)]
    after = [sample("nx-cc") for _ in range(40)]
    try:
        async with ingress_client(via_proxy, sources) as client:
            await proxy.cut()
            await push_all(client, during, concurrency=20)  # each one 200, from the spool
            text = await scrape(client)
            assert metric(text, "cdrflow_spool_records") == len(during)
            assert metric(text, "cdrflow_spool_writes_total") == len(during)
            assert metric(text, "cdrflow_spool_bytes") > 0
            assert metric(text, "cdrflow_spool_oldest_age_seconds") >= 0
            assert metric(text, "cdrflow_spool_capacity_bytes") == settings.spool_max_bytes
            assert (await client.get("/readyz")).status == 200  # the spool has room
            # Readiness stays up on the spool; the link's own gauge says the broker is gone.
            assert metric(text, "cdrflow_ingress_broker_ready") == 1
            assert metric(text, "cdrflow_ingress_broker_connected") == 0

            await proxy.restore()

            async def linked() -> bool:
                return metric(await scrape(client), "cdrflow_ingress_broker_connected") == 1

            assert await eventually(linked, timeout=40)

            async def draining() -> bool:
                return metric(await scrape(client), "cdrflow_spool_drained_total") > 0

            assert await eventually(draining, timeout=40)
            async with running_worker(settings, sources):
                await push_all(client, after, concurrency=20)  # new callbacks flow meanwhile

                async def all_stored() -> bool:
                    return len(await stored(db, "nx-cc")) >= len(during) + len(after)

                assert await eventually(all_stored, timeout=40)
            text = await scrape(client)
    finally:
        await proxy.close()
    assert await stored(db, "nx-cc") == {item.external_id: 1 for item in during + after}
    drained = metric(text, "cdrflow_spool_drained_total")
    assert drained == metric(text, "cdrflow_spool_writes_total")
    assert drained >= len(during)
    assert metric(text, "cdrflow_spool_records") == 0
    assert metric(text, "cdrflow_spool_torn_records_total") == 0
    assert segments(Path(settings.spool_dir)) == []


async def test_a_spooled_batch_that_reaches_cdr_raw_twice_is_counted_once(
    settings: Settings,
    sources: Sources,
    channel: AbstractChannel,
    db: asyncpg.Connection,
    tmp_path: Path,
) -> None:
    directory = tmp_path / "spool"
    items = [sample("nx-dr") for _ in range(5)]
    spool = await Spool.open(directory, max_bytes=1 << 20, metrics=IngressMetrics())
    for item in items:
        await spool.append(envelope(item).encode())
    # The drainer publishes a batch and the broker confirms it; the process dies before
    # the spool records the confirm.
    batch = await spool.next_batch(100, 1 << 20)
    assert batch is not None
    await declare(channel, settings.topology())
    await channel.default_exchange.publish(raw_message(batch.payloads), settings.raw_queue)
    await spool.close()

    restarted = await Spool.open(directory, max_bytes=1 << 20, metrics=IngressMetrics())
    assert restarted.records == len(items)
    link = BrokerLink(settings.amqp_url, settings.topology(), name="test-spool-drainer")
    await link.start()
    drainer = SpoolDrainer(
        restarted,
        link,
        queue=settings.raw_queue,
        max_envelopes=100,
        max_bytes=1 << 20,
        confirm_timeout=5,
    )
    drainer.start()
    try:
        await asyncio.wait_for(restarted.wait_until_empty(), 20)
    finally:
        await drainer.stop()
        await restarted.close()
        await link.close()
    assert await queue_depth(channel, settings.raw_queue) == 2  # the same callbacks, twice

    async with running_worker(settings, sources) as worker:

        async def both_copies_processed() -> bool:
            seen = worker.metrics.registry.get_sample_value(
                "cdrflow_worker_deliveries_total", {"outcome": "seen_before"}
            )
            return seen == len(items)

        assert await eventually(both_copies_processed)
    assert await stored(db, "nx-dr") == {item.external_id: 1 for item in items}
    assert await db.fetchval("SELECT count(*) FROM deliveries") == len(items)


# --- SIGKILL in the middle of spooling ---------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@asynccontextmanager
async def ingress_process(
    settings: Settings, workdir: Path, name: str
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    sources = workdir / "sources.toml"
    sources.write_text(SOURCES_TOML)
    port = free_port()
    env = {**os.environ, **ENVIRON, **settings_env(settings), "CDRFLOW_SOURCES": str(sources)}
    with (workdir / f"{name}.log").open("ab") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "cdrflow.cli",
            "ingress",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:

            async def ready() -> bool:
                try:
                    async with session.get(base + "/readyz") as response:
                        return response.status == 200
                except aiohttp.ClientError:
                    return False

            assert await eventually(ready, timeout=30), (workdir / f"{name}.log").read_text()
        yield process, base
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def push_until_killed(
    base: str, process: asyncio.subprocess.Process, items: list[Sample]
) -> list[Sample]:
    """Push concurrently; SIGKILL the ingress once a third have been answered. Returns the
    callbacks that got 200."""
    accepted: list[Sample] = []
    killed: list[bool] = []
    queue = iter(items)

    async def pusher(session: aiohttp.ClientSession) -> None:
        for item in queue:
            try:
                async with session.post(base + callback_path(item.source), data=item.body) as r:
                    if r.status == 200:
                        accepted.append(item)
            except aiohttp.ClientError:
                return  # the process is gone
            if len(accepted) >= len(items) // 3 and not killed:
                killed.append(True)
                process.send_signal(signal.SIGKILL)

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(pusher(session) for _ in range(32)))
    return accepted


async def test_sigkill_while_spooling_loses_no_answered_callback_and_counts_a_torn_record(
    settings: Settings, sources: Sources, db: asyncpg.Connection, tmp_path: Path
) -> None:
    unreachable = settings.with_(amqp_url=f"amqp://guest:guest@127.0.0.1:{free_port()}/")
    items = [sample("nx-cc") for _ in range(600)]
    async with ingress_process(unreachable, tmp_path, "first") as (process, base):
        accepted = await push_until_killed(base, process, items)
        await process.wait()
    assert process.returncode == -signal.SIGKILL
    assert len(accepted) >= len(items) // 3
    # A kill can land inside a group's write; make sure a torn tail is there to be found.
    newest = segments(Path(settings.spool_dir))[-1]
    with newest.open("ab") as file:
        file.write(encode_record(envelope(sample("nx-cc")).encode(), 0)[:50])

    async with (
        ingress_process(settings, tmp_path, "second") as (restarted, base),
        running_worker(settings, sources),
        aiohttp.ClientSession() as session,
    ):

        async def drained() -> bool:
            return len(await stored(db, "nx-cc")) >= len(accepted)

        assert await eventually(drained, timeout=60)
        async with session.get(base + "/metrics") as response:
            text = await response.text()
        restarted.send_signal(signal.SIGTERM)
        assert await restarted.wait() == 0
    assert metric(text, "cdrflow_spool_torn_records_total") == 1
    rows = await stored(db, "nx-cc")
    assert all(rows.get(item.external_id) == 1 for item in accepted)  # each once, none lost
    assert set(rows) <= {item.external_id for item in items}


# --- what the broker refuses, returns or leaves unconfirmed goes to the spool ----------


def spooled_age(text: str) -> float:
    return metric(text, "cdrflow_spool_oldest_age_seconds")


async def assert_spooled_then_stored_once(
    client: IngressClient,
    settings: Settings,
    sources: Sources,
    db: asyncpg.Connection,
    items: list[Sample],
    let_the_broker_accept: Callable[[], Awaitable[None]],
) -> None:
    """`items` were answered 200 while the broker would not take them: they are in the
    spool, aging; once the broker accepts again they are drained and stored once each."""
    text = await scrape(client)
    assert metric(text, "cdrflow_spool_writes_total") >= len(items)
    assert metric(text, "cdrflow_spool_records") >= len(items)
    assert metric(text, "cdrflow_spool_drained_total") == 0

    async def aging() -> bool:
        return spooled_age(await scrape(client)) > 0

    assert await eventually(aging)
    async with running_worker(settings, sources):
        await let_the_broker_accept()

        async def drained() -> bool:
            return metric(await scrape(client), "cdrflow_spool_records") == 0

        assert await eventually(drained, timeout=40)
        text = await scrape(client)
        assert spooled_age(text) == 0
        drained_total = metric(text, "cdrflow_spool_drained_total")
        assert drained_total == metric(text, "cdrflow_spool_writes_total")

        async def all_stored() -> bool:
            return len(await stored(db, items[0].source)) >= len(items)

        assert await eventually(all_stored, timeout=40)
    assert await stored(db, items[0].source) == {item.external_id: 1 for item in items}


def publish_failures(text: str, reason: str) -> float:
    return metric(text, f'cdrflow_ingress_publish_failures_total{{reason="{reason}"}}')


async def test_a_publish_returned_as_unroutable_is_spooled_and_drained_once_routable(
    settings: Settings, sources: Sources, channel: AbstractChannel, db: asyncpg.Connection
) -> None:
    items = [sample("nx-cc") for _ in range(30)]
    async with ingress_client(settings, sources) as client:
        await channel.queue_delete(settings.raw_queue)  # mandatory publishes come back
        await push_all(client, items, concurrency=10)
        assert publish_failures(await scrape(client), "PublishError") >= 1  # basic.return

        async def declare_the_queue_again() -> None:
            await declare(channel, settings.topology())

        await assert_spooled_then_stored_once(
            client, settings, sources, db, items, declare_the_queue_again
        )


def rabbitmqctl(*arguments: str) -> None:
    subprocess.run(["rabbitmqctl", *arguments], check=True, capture_output=True, timeout=60)


async def test_a_publish_the_broker_nacks_is_spooled_and_drained_once_accepted(
    settings: Settings, sources: Sources, channel: AbstractChannel, db: asyncpg.Connection
) -> None:
    # The raw queue overflows with reject-publish (schemas/topology.py); a policy, unlike
    # a queue argument, caps its length without a TopologyMismatch: every publish is nacked.
    policy = f"{settings.raw_queue}.full"
    pattern = "^" + settings.raw_queue.replace(".", "\\.") + "$"
    items = [sample("nx-cc") for _ in range(30)]
    async with ingress_client(settings, sources) as client:
        await asyncio.to_thread(
            rabbitmqctl, "set_policy", "--apply-to", "queues", "--priority", "100",
            policy, pattern, '{"max-length": 0}',
        )  # fmt: skip
        try:
            # The probes taken before the policy reached the queue stay in it: a quorum
            # queue emptied below its cap would take publishes again for a moment.
            assert await eventually(lambda: nacked_by(channel, settings.raw_queue))
            await push_all(client, items, concurrency=10)
            assert publish_failures(await scrape(client), "DeliveryError") >= 1

            async def lift_the_cap() -> None:
                # A quorum queue tells publishers it takes messages again when a consumer
                # shrinks it, not when its cap is lifted (RabbitMQ 3.10): the worker runs.
                await asyncio.to_thread(rabbitmqctl, "clear_policy", policy)

            await assert_spooled_then_stored_once(
                client, settings, sources, db, items, lift_the_cap
            )
        finally:
            with contextlib.suppress(subprocess.CalledProcessError):  # cleared already
                await asyncio.to_thread(rabbitmqctl, "clear_policy", policy)


async def nacked_by(channel: AbstractChannel, queue: str) -> bool:
    probe = raw_message([envelope(sample("nx-voice")).encode()])  # stored apart from nx-cc
    try:
        await channel.default_exchange.publish(probe, queue, mandatory=True, timeout=5)
    except DeliveryError:
        return True
    return False


async def test_a_confirm_that_does_not_come_in_time_sends_the_callback_to_the_spool(
    settings: Settings, sources: Sources, db: asyncpg.Connection
) -> None:
    items = [sample("nx-cc") for _ in range(20)]
    async with (
        broker_behind_proxy(settings, confirm_timeout=1.0) as (proxy, via_proxy),
        ingress_client(via_proxy, sources) as client,
    ):
        proxy.stall()  # the connection stays open; no confirm comes back
        await push_all(client, items, concurrency=10)  # each one 200 while the broker is silent
        assert publish_failures(await scrape(client), "TimeoutError") >= 1

        async def end_the_stall() -> None:
            # What was held reaches cdr.raw too: those callbacks arrive twice, and count once.
            proxy.resume()

        await assert_spooled_then_stored_once(client, settings, sources, db, items, end_the_stall)


async def test_with_the_spool_full_and_the_broker_out_of_reach_the_provider_gets_its_failure(
    settings: Settings, sources: Sources
) -> None:
    unreachable = settings.with_(
        amqp_url=f"amqp://guest:guest@127.0.0.1:{free_port()}/", spool_max_bytes=8192
    )
    async with ingress_client(unreachable, sources) as client:
        accepted = {source: await fill(client, source) for source in ("nx-cc", "nx-dr", "hw")}
        assert accepted["nx-cc"] >= 1  # the spool took what fitted
        text = await scrape(client)
        assert metric(text, "cdrflow_spool_records") == sum(accepted.values())
        assert metric(text, "cdrflow_spool_bytes") <= unreachable.spool_max_bytes


async def fill(client: IngressClient, source: str) -> int:
    """Push callbacks of `source` until one is refused, which must get the provider's
    failure answer with the 503; how many were accepted before."""
    accepted = 0
    while True:
        response = await client.post(callback_path(source), data=sample(source).body)
        if response.status != 200:
            break
        accepted += 1
    assert response.status == 503
    if source == "hw":
        assert loads(await response.read())["retCode"] != "0"  # Huawei's failure
    else:
        assert await response.text() == "error"  # NXCloud's
    return accepted


async def stored_at_least(db: asyncpg.Connection, source: str, count: int) -> bool:
    return len(await stored(db, source)) >= count


def torn_tails(directory: Path) -> int:
    """Segments that end in a torn record, as the next start-up's scan will find them (a
    segment torn inside its header is deleted, not counted)."""
    return sum(
        1
        for path in segments(directory)
        if (data := path.read_bytes()).startswith(MAGIC) and scan_records(data, len(MAGIC)).damaged
    )


def large(item: Sample) -> Sample:
    # Trailing whitespace keeps the JSON valid; 256 KiB envelopes make group writes long
    # enough for a kill to land inside one.
    return dataclasses.replace(item, body=item.body + b" " * 262144)


@pytest.mark.timeout(240)
async def test_sigkill_while_writing_large_envelopes_again_and_again_loses_nothing_answered(
    settings: Settings, sources: Sources, db: asyncpg.Connection, tmp_path: Path
) -> None:
    unreachable = settings.with_(amqp_url=f"amqp://guest:guest@127.0.0.1:{free_port()}/")
    sent: list[Sample] = []
    accepted: list[Sample] = []
    for round in range(3):
        items = [large(sample("nx-cc")) for _ in range(300)]
        sent += items
        async with ingress_process(unreachable, tmp_path, f"killed-{round}") as (process, base):
            accepted += await push_until_killed(base, process, items)
            await process.wait()
        assert process.returncode == -signal.SIGKILL
        torn = torn_tails(Path(settings.spool_dir))  # 0 or 1: where the kill happened to land

        async with (
            ingress_process(settings, tmp_path, f"restarted-{round}") as (restarted, base),
            running_worker(settings, sources),
            aiohttp.ClientSession() as session,
        ):
            async with session.get(base + "/metrics") as response:
                assert metric(await response.text(), "cdrflow_spool_torn_records_total") == torn

            delivered = functools.partial(stored_at_least, db, "nx-cc", len(accepted))
            assert await eventually(delivered, timeout=60)
            restarted.send_signal(signal.SIGTERM)
            assert await restarted.wait() == 0
        rows = await stored(db, "nx-cc")
        assert all(rows.get(item.external_id) == 1 for item in accepted)  # each once
        assert set(rows) <= {item.external_id for item in sent}


async def test_drain_spool_sends_a_left_behind_spool_once_and_refuses_one_in_use(
    settings: Settings, channel: AbstractChannel, tmp_path: Path
) -> None:
    """The volume of a scaled-down ingress pod, drained by `cdrflow drain-spool` (the Job
    of deploy/k8s/jobs/drain-spool.yaml): every callback reaches cdr.raw, the spool ends
    empty, and a spool an ingress still holds is left alone."""
    directory = tmp_path / "spool"
    envelopes = [envelope(sample("nx-dr")) for _ in range(12)]
    spool = await Spool.open(directory, max_bytes=1 << 20, metrics=IngressMetrics())
    for item in envelopes:
        await spool.append(item.encode())
    env = {**settings_env(settings), "CDRFLOW_SOURCES": str(tmp_path / "unused.toml")}

    refused = cdrflow("drain-spool", "--dir", str(directory), env=env, timeout=30)
    assert refused.returncode == 2
    assert "is in use by another process" in refused.stderr
    await spool.close()

    drained = cdrflow("drain-spool", "--dir", str(directory), env=env, timeout=60)
    assert drained.returncode == 0, drained.stderr
    assert f"{directory}: drained" in drained.stdout
    sent = await take_envelopes(channel, settings.raw_queue, count=len(envelopes))
    assert sorted(e.ingest_id for e in sent) == sorted(e.ingest_id for e in envelopes)
    reopened = await Spool.open(directory, max_bytes=1 << 20, metrics=IngressMetrics())
    assert reopened.records == 0
    await reopened.close()
