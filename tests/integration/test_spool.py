"""The ingress's spool against the real RabbitMQ and PostgreSQL: callbacks answered while
the broker is out of reach are stored exactly once when it is back, a torn record left by
SIGKILL costs only itself, and a spooled batch sent twice is counted once."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import asyncpg
from aio_pika.abc import AbstractChannel

from cdrflow.amqp import BrokerLink, declare, raw_message
from cdrflow.settings import Settings
from ingress.drainer import SpoolDrainer
from ingress.metrics import IngressMetrics
from ingress.spool import Spool, encode_record
from schemas.sources import Sources
from tests.support.broker import queue_depth
from tests.support.ingress import IngressClient, ingress_client, push_all
from tests.support.proxy import TcpProxy
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

            await proxy.restore()

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
