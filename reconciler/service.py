"""`cdrflow reconciler`: a pass over every reconciled source every `interval_minutes`, until
SIGTERM, which stops it between two requests (a window it was listing stays due).

Each source has its own loop. A source whose pass another process holds is passed over
until the next interval: whatever the number of reconcilers, one pass per source at a time
(`tables.try_lock_source`), and one shared rate limit per provider account
(`tables.reserve_turn`). With no source to reconcile it says so once and idles, serving its
health endpoints, so that a deployment of it never crash-loops."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

from cdrflow.backoff import sleep_unless
from cdrflow.health import serve_health
from cdrflow.logs import get_logger
from cdrflow.settings import Settings
from reconciler.books_client import Stopped
from reconciler.reconciler_metrics import ReconcileMetrics
from reconciler.runner import Reconciliation, reconciled
from reconciler.tables import FAILED
from schemas.providers import Provider
from schemas.sources import Source

log = get_logger("cdrflow.reconciler")

RETRY_AFTER_ERROR_SECONDS = 30.0


class Reconciler:
    def __init__(
        self,
        settings: Settings,
        sources: Mapping[str, Source],
        providers: Mapping[str, Provider],
        stopping: asyncio.Event,
    ) -> None:
        self.settings = settings
        self.sources = reconciled(sources)
        self.providers = providers
        self.stopping = stopping
        self.metrics = ReconcileMetrics(self.sources)
        self.passes = 0  # completed, over every source
        self._reconciliation: Reconciliation | None = None

    @property
    def ready(self) -> bool:
        return not self.sources or (self._reconciliation is not None and self._reconciliation.ready)

    async def run(self) -> None:
        async with serve_health(
            self.settings.reconciler_port, lambda: self.ready, self.metrics.render
        ):
            if not self.sources:
                log.info("reconciler_idle", reason="no source has a reconcile table")
                await self.stopping.wait()
                return
            reconciliation = Reconciliation(
                self.settings,
                self.providers,
                self.stopping,
                self.metrics,
                name="cdrflow-reconciler",
                pool_size=2 * len(self.sources) + 1,
                wait_for_database=True,
            )
            try:
                await reconciliation.open()
            except Exception:
                if self.stopping.is_set():  # stopped while waiting for the database
                    return
                raise
            try:
                self._reconciliation = reconciliation
                log.info("reconciler_started", sources=sorted(self.sources))
                await asyncio.gather(*(self._loop(source) for source in self.sources.values()))
            finally:
                await reconciliation.close()
        log.info("reconciler_stopped")

    async def _loop(self, source: Source) -> None:
        assert source.reconcile is not None
        assert self._reconciliation is not None
        interval = source.reconcile.interval.total_seconds()
        while not self.stopping.is_set():
            started = time.monotonic()
            wait = interval
            try:
                outcomes = await self._reconciliation.pass_over(source, wait_for_lock=False)
            except Stopped:
                return
            except Exception as exc:  # the database or the broker is away: try again soon
                log.warning("reconcile_pass_failed", source=source.name, error=repr(exc))
                wait = min(interval, RETRY_AFTER_ERROR_SECONDS)
            else:
                if outcomes is None:
                    log.info("reconcile_pass_skipped", source=source.name, reason="held elsewhere")
                else:
                    self.passes += 1
                    log.info(
                        "reconcile_pass",
                        source=source.name,
                        windows=len(outcomes),
                        failed=sum(o.status == FAILED for o in outcomes),
                        backfilled=sum(o.counts.backfilled for o in outcomes),
                        discrepancies=sum(o.counts.discrepancies for o in outcomes),
                    )
            await sleep_unless(self.stopping, max(0.0, wait - (time.monotonic() - started)))
