"""What the passes of one process share: the database pool, the HTTP session to the
providers, the publishing link to `cdr.raw`, the metrics; and the pass lock of a source."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from datetime import datetime
from types import TracebackType

import aiohttp
import asyncpg
from tenacity import RetryCallState

from cdrflow.amqp import BrokerLink
from cdrflow.backoff import is_loud, retry_fields, retrying
from cdrflow.logs import get_logger
from cdrflow.settings import Settings
from reconciler import tables
from reconciler.books_client import BooksClient
from reconciler.passes import SourcePass, WindowOutcome, lock_source
from reconciler.reconciler_metrics import ReconcileMetrics
from schemas.providers import Provider
from schemas.sources import Source
from workers.storage.database import create_pool, is_transient

log = get_logger("cdrflow.reconcile")

DATABASE_WAIT_MAX = 30.0


def _log_wait(state: RetryCallState) -> None:
    level = log.warning if is_loud(state) else log.debug
    level("reconcile_database_unavailable", **retry_fields(state))


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
        wait_for_database: bool = False,
    ) -> None:
        self.settings = settings
        self.providers = providers
        self.stopping = stopping
        self.metrics = metrics
        self.dry_run = dry_run
        self.name = name
        self.pool_size = pool_size  # a pass holds one connection for its lock, one to work
        self.wait_for_database = wait_for_database  # a long-running process waits; a command not
        self.pool: asyncpg.Pool | None = None
        self.session: aiohttp.ClientSession | None = None
        self.link: BrokerLink | None = None
        self.client: BooksClient | None = None

    async def __aenter__(self) -> Reconciliation:
        await self.open()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def open(self) -> None:
        self.pool = await self._open_pool()
        self.session = aiohttp.ClientSession()
        self.client = BooksClient(self.session, self.pool, self.stopping)
        if not self.dry_run:
            self.link = BrokerLink(self.settings.amqp_url, self.settings.topology(), name=self.name)
            await self.link.start()

    async def _open_pool(self) -> asyncpg.Pool:
        if not self.wait_for_database:
            return await create_pool(self.settings.database_url, self.pool_size, name=self.name)
        async for attempt in retrying(
            stop=self.stopping,
            max_wait=DATABASE_WAIT_MAX,
            on_retry=_log_wait,
            retry_on=is_transient,
        ):
            with attempt:
                return await create_pool(self.settings.database_url, self.pool_size, name=self.name)
        raise AssertionError("unreachable: tenacity returns or raises")

    async def close(self) -> None:
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
                await tables.unlock_source(lock_connection, source.name)
