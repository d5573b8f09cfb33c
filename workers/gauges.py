"""Gauges only PostgreSQL knows: the outbox backlog and the age of its oldest row, and the
unresolved rejections by source and reason. Each worker reads them at the outbox relay's
interval; all workers report the same numbers (queries use `max`, not `sum`). Both queries
are cheap: the outbox is small when healthy, and unresolved rejections have a partial
index (`rejected_callbacks_open_idx`)."""

from __future__ import annotations

import asyncio

import asyncpg

from cdrflow.backoff import sleep_unless
from cdrflow.logs import get_logger
from workers.storage.database import is_transient
from workers.worker_metrics import WorkerMetrics

log = get_logger("cdrflow.worker.gauges")

_OUTBOX = """
SELECT count(*) AS rows,
       coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 AS oldest_age
FROM outbox
"""
_UNRESOLVED = """
SELECT source, reason, count(*) AS count FROM rejected_callbacks
WHERE resolved_at IS NULL GROUP BY source, reason
"""


class DatabaseGauges:
    def __init__(self, pool: asyncpg.Pool, metrics: WorkerMetrics, interval_seconds: float) -> None:
        self.pool = pool
        self.metrics = metrics
        self.interval_seconds = interval_seconds
        # Every (source, reason) ever reported: one that is resolved drops to 0 and stays.
        self._rejection_labels: set[tuple[str, str]] = set()

    async def read_once(self) -> None:
        async with self.pool.acquire() as connection:
            rows, oldest_age = await connection.fetchrow(_OUTBOX) or (0, 0.0)
            unresolved = await connection.fetch(_UNRESOLVED)
        self.metrics.outbox_rows.set(rows)
        self.metrics.outbox_oldest_age.set(max(0.0, oldest_age))
        counts = {(row["source"], row["reason"]): row["count"] for row in unresolved}
        self._rejection_labels |= counts.keys()
        for labels in self._rejection_labels:
            self.metrics.rejections_unresolved.labels(*labels).set(counts.get(labels, 0))

    async def run(self, stopping: asyncio.Event) -> None:
        """Read the gauges until `stopping` is set. While the database does not answer they
        keep their last values: `cdrflow_worker_database_up` says they are stale."""
        while not stopping.is_set():
            try:
                await self.read_once()
            except Exception as exc:
                if not is_transient(exc):
                    log.exception("database_gauges_failed")
                else:
                    log.debug("database_gauges_deferred", error=f"{type(exc).__name__}: {exc}")
            await sleep_unless(stopping, self.interval_seconds)
