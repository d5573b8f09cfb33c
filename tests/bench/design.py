"""The design limit: `tests.bench.onefile` (the same design with no per-callback logic)
end to end under the same wrk load as cdrflow's end-to-end row, with as many worker
processes: callbacks/s from the start of the load until the downstream queue holds a
record of every callback answered 200, and the CPU of every process per callback."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import aio_pika
import asyncpg

from tests.bench import cpu, onefile
from tests.bench.flow import offer_load
from tests.bench.options import Options
from tests.bench.processes import Served, alive, onefile_pipeline
from tests.bench.services import Services
from tests.bench.wrk import Load
from tests.support.env import unique

DRAIN_TIMEOUT = 120  # seconds after the load for the last records to reach the queue


@dataclass(frozen=True)
class DesignLimit:
    callbacks: int
    seconds: float
    load: Load
    cpu: cpu.Account


async def design_limit(
    services: Services, database_url: str, options: Options, worker_count: int, workdir: Path
) -> DesignLimit:
    names = onefile.Names(unique("bench.onefile"))
    database = await asyncpg.connect(database_url)
    await database.execute(onefile.CREATE_TABLES)
    connection = await aio_pika.connect(services.amqp_url)
    try:
        channel = await connection.channel()
        await onefile.declare_all(channel, names)
        try:
            async with onefile_pipeline(
                services.amqp_url, names.prefix, database_url, workdir, worker_count
            ) as (served, running):
                await _until_consumed(channel, names.raw, worker_count, [served, *running])
                offered = await offer_load(served, running, options)
                answered = offered.load.requests - offered.load.failed
                await _until_done(channel, database, names.downstream, answered, [served, *running])
                finished = time.monotonic()
                spent = offered.cpu_since()
        finally:
            await onefile.delete_all(channel, names)
    finally:
        await connection.close()
        await database.close()
    return DesignLimit(answered, finished - offered.started, offered.load, spent)


async def _until_consumed(
    channel: aio_pika.abc.AbstractChannel, queue: str, count: int, processes: list[Served]
) -> None:
    for _ in range(600):
        alive(processes)
        declared = await channel.declare_queue(queue, passive=True)
        if (declared.declaration_result.consumer_count or 0) >= count:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"fewer than {count} one-file workers consume {queue}")


async def _until_done(
    channel: aio_pika.abc.AbstractChannel,
    database: asyncpg.Connection,
    downstream: str,
    callbacks: int,
    processes: list[Served],
) -> None:
    """Until the ledger holds every callback answered 200 and the downstream queue a
    message for every record."""
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while time.monotonic() < deadline:
        alive(processes)
        delivered, records = await database.fetchrow(onefile.COUNTS)  # type: ignore[misc]
        declared = await channel.declare_queue(downstream, passive=True)
        published = declared.declaration_result.message_count or 0
        if delivered >= callbacks and published >= records:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"the one-file pipeline did not take {callbacks} callbacks in time")
