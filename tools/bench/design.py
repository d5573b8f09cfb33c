"""The design limit: `tools.bench.onefile` (the same design with no per-callback logic)
end to end under the same wrk load as cdrflow's end-to-end row, with as many worker
processes: callbacks/s from the start of the load until the downstream queue holds a
record of every callback answered 200, and the CPU of every process per callback."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from tools.bench import cpu, onefile
from tools.bench.flow import offer_load
from tools.bench.options import Options
from tools.bench.pipeline import Broker, topology
from tools.bench.processes import Served, alive, bench_settings, onefile_pipeline
from tools.bench.services import Services
from tools.bench.wrk import Load

DRAIN_TIMEOUT = 120  # seconds after the load for the last records to reach the queue


@dataclass(frozen=True)
class DesignLimit:
    callbacks: int
    records: int  # on the downstream queue: one per distinct callback
    seconds: float
    load: Load
    cpu: cpu.Account


async def design_limit(
    services: Services, database_url: str, options: Options, worker_count: int, workdir: Path
) -> DesignLimit:
    settings = bench_settings(services.amqp_url, database_url, workdir)
    database = await asyncpg.connect(database_url)
    try:
        await database.execute(onefile.CREATE_TABLES)
        async with (
            topology(settings) as broker,
            onefile_pipeline(settings, workdir, worker_count) as (served, running),
        ):
            await broker.until_consumed_by(worker_count)
            offered = await offer_load(served, running, options)
            answered = offered.load.requests - offered.load.failed
            records = await _until_done(broker, database, answered, [served, *running])
            finished = time.monotonic()
            spent = offered.cpu_since()
    finally:
        await database.close()
    return DesignLimit(answered, records, finished - offered.started, offered.load, spent)


async def _until_done(
    broker: Broker, database: asyncpg.Connection, callbacks: int, processes: list[Served]
) -> int:
    """Until the ledger holds every callback answered 200 and the downstream queue a
    message for every record; the records."""
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while time.monotonic() < deadline:
        alive(processes)
        # The records are counted only at the end, and as often as cdrflow's are
        # (`pipeline.until_drained`): the harness's counts are CPU the run measures.
        if await database.fetchval(onefile.DELIVERED) >= callbacks:
            records = int(await database.fetchval(onefile.RECORDS))
            if await broker.depth(broker.downstream) >= records:
                return records
        await asyncio.sleep(0.1)
    raise TimeoutError(f"the one-file pipeline did not take {callbacks} callbacks in time")
