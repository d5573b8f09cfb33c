"""One worker draining a backlog already on the raw queue: callbacks/s, the worker's own
CPU per callback (utime + stime from /proc, between the first stored callback and the
last), its peak RSS; and, with `--full`, its peak RSS over the first minutes of draining a
1,000,000-message backlog (one callback a message)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from tools.bench import mix
from tools.bench.checkout import Checkout
from tools.bench.pipeline import fill, stored, topology, until_drained
from tools.bench.processes import alive, bench_settings, cpu_seconds, peak_rss_mb, workers
from tools.bench.services import Services


@dataclass(frozen=True)
class Drain:
    callbacks: int
    seconds: float
    cpu_seconds: float
    rss_mb: float


async def drain(
    services: Services,
    database_url: str,
    backlog: int,
    workdir: Path,
    code: Checkout | None = None,
) -> Drain:
    """`code`: the tree whose worker drains (this one when None)."""
    settings = bench_settings(services.amqp_url, database_url, workdir)
    db = await asyncpg.connect(database_url)
    try:
        async with topology(settings) as broker:
            total = await fill(broker, mix.callbacks(backlog, seed=backlog))
            async with workers(settings, workdir, code=code) as (worker,):
                # From the moment it consumes: its start-up is not draining.
                await broker.until_consumed_by(1)
                started, cpu_started = time.monotonic(), cpu_seconds(worker.pid)
                first = await stored(db)
                drained = await until_drained(broker, db, at_least=total)
                cpu = cpu_seconds(worker.pid) - cpu_started
                rss = peak_rss_mb(worker.pid)
    finally:
        await db.close()
    return Drain(drained.callbacks - first, drained.finished - started, cpu, rss)


async def big_backlog_rss(
    services: Services, database_url: str, messages: int, seconds: float, workdir: Path
) -> float:
    """Peak RSS of a worker facing `messages` one-callback messages, after `seconds`."""
    settings = bench_settings(services.amqp_url, database_url, workdir)
    async with topology(settings) as broker:
        await fill(broker, mix.callbacks(messages, seed=messages), per_message=1)
        async with workers(settings, workdir) as (worker,):
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                alive([worker])
                await asyncio.sleep(1)
            return peak_rss_mb(worker.pid)
