"""Bytes on disk per call: call-center callbacks with about 10% re-pushes, drained by one
worker into a database of their own; every table, index and TOAST table (the `public`
schema), as the run leaves them and after a plain `VACUUM ANALYZE` (what autovacuum would
have done), divided by the calls stored.

"As the run leaves them" is once the worker is idle: it has truncated the outbox's
partitions, the one it was writing to included, which it does after a relay round with
no row written (workers/outbox.py). Under load that partition holds up to 5,000 deleted
rows, a bound whatever the tables hold, not a cost per call."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from tools.bench import mix
from tools.bench.pipeline import fill, topology, until_drained
from tools.bench.processes import bench_settings, workers
from tools.bench.services import Services

PROVIDER = "nxcloud.call_center_report"
_OUTBOX_PAGES = """
SELECT coalesce(sum(pg_relation_size(i.inhrelid)), 0)::bigint FROM pg_inherits i
WHERE i.inhparent = 'outbox'::regclass
"""
_ON_DISK = """
SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'm')
"""


@dataclass(frozen=True)
class Storage:
    calls: int
    callbacks: int
    body_bytes: float  # mean request body
    as_left: float  # bytes per call, no vacuum since the run
    vacuumed: float  # bytes per call after VACUUM ANALYZE


async def bytes_per_call(
    services: Services, database_url: str, callbacks: int, workdir: Path
) -> Storage:
    backlog = list(mix.callbacks(callbacks, seed=callbacks, providers=(PROVIDER,), malformed=0))
    settings = bench_settings(services.amqp_url, database_url, workdir)
    db = await asyncpg.connect(database_url)
    try:
        async with topology(settings) as broker:
            total = await fill(broker, backlog)
            async with workers(settings, workdir):
                await until_drained(broker, db, at_least=total)
                await _until_outbox_truncated(db, settings.outbox_interval_seconds)
        calls = int(await db.fetchval("SELECT count(*) FROM call_records"))
        as_left = int(await db.fetchval(_ON_DISK))
        await db.execute("VACUUM ANALYZE")
        vacuumed = int(await db.fetchval(_ON_DISK))
    finally:
        await db.close()
    body = sum(len(c.request.body) for c in backlog) / len(backlog)
    return Storage(calls, len(backlog), body, as_left / calls, vacuumed / calls)


async def _until_outbox_truncated(db: asyncpg.Connection, interval: float) -> None:
    """Wait for the idle worker's relay to truncate the outbox: two relay rounds, the
    second one idle; three to spare. Measured as it is when they have not."""
    deadline = time.monotonic() + 5 * interval
    while time.monotonic() < deadline:
        if not await db.fetchval(_OUTBOX_PAGES):
            return
        await asyncio.sleep(0.2)
