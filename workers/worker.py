"""`cdrflow worker`: one stateless competing consumer of `cdr.raw`.

The worker's life: wait for a database with the current schema, open the pool and the
publishing link, run the outbox relay and the consumer (`workers.consumer`, which hands
each batch to `workers.pipeline`) until SIGTERM, then close everything in order.

SIGTERM: the consumer stops taking work and finishes the messages in hand. If the
database stays down past `shutdown_timeout`, the worker gives up waiting for it and the
messages in hand are handed back to the broker instead."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping

import asyncpg
from tenacity import RetryCallState

from cdrflow.amqp import BrokerLink
from cdrflow.backoff import is_loud, retry_fields, retrying
from cdrflow.health import serve_health
from cdrflow.logs import get_logger
from cdrflow.settings import Settings
from schemas.providers import Provider
from schemas.sources import Source
from workers.consumer import Consumer
from workers.gauges import DatabaseGauges
from workers.outbox import RecordPublisher
from workers.pipeline import Pipeline
from workers.split import Splitter
from workers.storage.database import DatabaseHold, create_pool
from workers.storage.migrate import LATEST, schema_version
from workers.storage.writer import Store
from workers.worker_metrics import WorkerMetrics

log = get_logger("cdrflow.worker")


class SchemaOutdated(Exception):
    """The database answers, but `cdrflow migrate` has not brought it up to date."""


class Worker:
    def __init__(
        self,
        settings: Settings,
        sources: Mapping[str, Source],
        providers: Mapping[str, Provider],
    ) -> None:
        self.settings = settings
        self.sources = sources
        self.providers = providers
        self.stopping = asyncio.Event()
        self.consuming = asyncio.Event()  # set while subscribed to the raw queue
        self.metrics = WorkerMetrics(sources)
        self.hold = DatabaseHold()
        self.publisher: RecordPublisher | None = None

    def stop(self) -> None:
        if not self.stopping.is_set():
            log.info("worker_stopping")
            self.stopping.set()

    @property
    def database_up(self) -> bool:
        return (
            not self.hold.waiting.is_set()
            and self.publisher is not None
            and self.publisher.database_ok
        )

    @property
    def ready(self) -> bool:
        return self.consuming.is_set() and self.database_up

    async def run(self) -> None:
        async with serve_health(self.settings.worker_port, lambda: self.ready, self.metrics.render):
            await self._run()

    async def _run(self) -> None:
        pool = await self._open_pool()
        if pool is None:
            return
        settings = self.settings
        link = BrokerLink(settings.amqp_url, settings.topology(), name="cdrflow-worker-records")
        await link.start()
        self.publisher = publisher = self._record_publisher(link, pool)
        self.metrics.database_up.set_function(lambda: 1.0 if self.database_up else 0.0)
        store = Store(pool, self.hold, retry_max_seconds=settings.db_retry_max_seconds)
        splitter = Splitter(
            link, raw_queue=settings.raw_queue, confirm_timeout=settings.confirm_timeout
        )
        pipeline = Pipeline(self.sources, self.providers, store, publisher, splitter, self.metrics)
        consumer = Consumer(settings, pipeline, self.hold, self.stopping, self.consuming)
        relay = asyncio.create_task(publisher.run(self.stopping), name="outbox-relay")
        gauges = DatabaseGauges(pool, self.metrics, settings.outbox_interval_seconds)
        reading = asyncio.create_task(gauges.run(self.stopping), name="database-gauges")
        deadline = asyncio.create_task(self._give_up_after_stop(), name="shutdown-deadline")
        try:
            await consumer.run()
        finally:
            await pipeline.wait_for_previous_publish()
            deadline.cancel()
            await relay
            await reading
            await link.close()
            await pool.close()
            log.info("worker_stopped")

    def _record_publisher(self, link: BrokerLink, pool: asyncpg.Pool) -> RecordPublisher:
        settings = self.settings
        return RecordPublisher(
            link,
            pool,
            exchange=settings.records_exchange,
            confirm_timeout=settings.confirm_timeout,
            grace_seconds=settings.outbox_grace_seconds,
            interval_seconds=settings.outbox_interval_seconds,
            retry_max_seconds=settings.db_retry_max_seconds,
        )

    async def _give_up_after_stop(self) -> None:
        await self.stopping.wait()
        await asyncio.sleep(self.settings.shutdown_timeout)
        log.warning("worker_handing_back", reason="database still unavailable at shutdown")
        self.hold.give_up.set()

    async def _open_pool(self) -> asyncpg.Pool | None:
        """Wait for a reachable database with the current schema (None: stopped first)."""
        with contextlib.suppress(Exception):  # raised: stopping while it was unusable
            async for attempt in retrying(
                stop=self.stopping,
                max_wait=self.settings.db_retry_max_seconds,
                on_retry=_log_database_unavailable,
            ):
                with attempt:
                    await self._check_schema()
                    return await create_pool(self.settings.database_url, self.settings.db_pool_size)
        return None

    async def _check_schema(self) -> None:
        connection = await asyncpg.connect(self.settings.database_url)
        try:
            version = await schema_version(connection)
        finally:
            await connection.close()
        if version < LATEST:
            raise SchemaOutdated(f"schema version {version}, this worker needs {LATEST}")


def _log_database_unavailable(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome is not None else None
    if isinstance(error, SchemaOutdated):  # an operator must act: say so louder
        level = log.error if is_loud(state) else log.debug
        level("database_schema_outdated", **retry_fields(state), hint="run `cdrflow migrate`")
        return
    level = log.warning if is_loud(state) else log.debug
    level("database_unavailable", **retry_fields(state))
