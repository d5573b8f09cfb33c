"""What the passes of one process share: the database pool, the HTTP session to the
providers, the publishing link to `cdr.raw`, the metrics; and the pass lock of a source."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from datetime import datetime
from types import TracebackType

import aiohttp
import asyncpg

from cdrflow.amqp import BrokerLink
from cdrflow.settings import Settings
from schemas.providers import Provider
from schemas.sources import Source
from workers.db import create_pool
from workers.reconcile import ledger
from workers.reconcile.books_client import BooksClient
from workers.reconcile.metrics import ReconcileMetrics
from workers.reconcile.passes import SourcePass, WindowOutcome, lock_source


def reconciled(sources: Mapping[str, Source]) -> dict[str, Source]:
    """The sources that have a `reconcile` table (only providers with books can)."""
    return {name: source for name, source in sources.items() if source.reconcile is not None}


class Reconciliation:
    def __init__(
        self,
        settings: Settings,
        providers: Mapping[str, Provider],
        stopping: asyncio.Event,
        metrics: ReconcileMetrics,
        *,
        dry_run: bool = False,
        name: str = "cdrflow-reconcile",
        pool_size: int = 3,
    ) -> None:
        self.settings = settings
        self.providers = providers
        self.stopping = stopping
        self.metrics = metrics
        self.dry_run = dry_run
        self.name = name
        self.pool_size = pool_size  # a pass holds one connection for its lock, one to work
        self.pool: asyncpg.Pool | None = None
        self.session: aiohttp.ClientSession | None = None
        self.link: BrokerLink | None = None
        self.client: BooksClient | None = None

    async def __aenter__(self) -> Reconciliation:
        self.pool = await create_pool(self.settings.database_url, self.pool_size, name=self.name)
        self.session = aiohttp.ClientSession()
        self.client = BooksClient(self.session, self.pool, self.stopping)
        if not self.dry_run:
            self.link = BrokerLink(self.settings.amqp_url, self.settings.topology(), name=self.name)
            await self.link.start()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.link is not None:
            await self.link.close()
        if self.session is not None:
            await self.session.close()
        if self.pool is not None:
            await self.pool.close()

    @property
    def ready(self) -> bool:
        return self.pool is not None and (
            self.dry_run or (self.link is not None and self.link.ready)
        )

    async def pass_over(
        self,
        source: Source,
        since: datetime | None = None,
        until: datetime | None = None,
        *,
        wait_for_lock: bool,
        on_rows: Callable[[int], None] = lambda _count: None,
    ) -> list[WindowOutcome] | None:
        """One pass over the source; None when another process's pass holds it (and
        `wait_for_lock` is false) or when stopped while waiting for it."""
        assert self.pool is not None
        assert self.client is not None
        provider = self.providers[source.provider]
        async with self.pool.acquire() as lock_connection:
            if not await lock_source(
                lock_connection, source.name, self.stopping, wait=wait_for_lock
            ):
                return None
            try:
                one_pass = SourcePass(
                    self.settings,
                    source,
                    provider,
                    self.pool,
                    self.client,
                    self.link,
                    self.metrics,
                    dry_run=self.dry_run,
                    on_rows=on_rows,
                )
                return await one_pass.run(since, until)
            finally:
                await ledger.unlock_source(lock_connection, source.name)
