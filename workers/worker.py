"""`cdrflow worker`: one stateless competing consumer of `cdr.raw`.

A batch closes at `batch_size` callbacks, `batch_wait_ms` after its first message, or when
every prefetched message is in hand. It is normalized, stored in one transaction, and only
then are its messages acknowledged; its records are published after that (outbox).

- A message that is not an envelope batch is parked at once (rejected to `cdr.dead`).
- A message redelivered twice or more is processed alone, so that a message that crashes
  workers takes only itself to `cdr.dead` when the delivery limit runs out.
- While PostgreSQL is down the batch is held (not acked, not dropped) and retried with
  backoff; the prefetch limit stops the broker from handing over more.
- SIGTERM: cancel the consumer, finish the messages in hand, publish, exit. If the database
  stays down past `shutdown_timeout`, the messages are handed back to the broker instead."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping

import asyncpg
from aio_pika.abc import AbstractIncomingMessage

from cdrflow.amqp import BrokerLink, connect, declare
from cdrflow.logs import get_logger
from cdrflow.settings import Settings
from schemas.envelope import COUNT_HEADER, EnvelopeError, decode_batch
from schemas.providers.base import Provider
from schemas.sources import Source
from workers.db import create_pool
from workers.metrics import WorkerMetrics, serve_health
from workers.migrate import LATEST, schema_version
from workers.normalize import Normalized, normalize_envelope
from workers.outbox import RecordPublisher
from workers.store import BatchResult, Store

log = get_logger("cdrflow.worker")

ISOLATE_AFTER = 2  # x-delivery-count from which a message is processed alone


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
        self.metrics = WorkerMetrics()
        self.store: Store | None = None
        self._held: AbstractIncomingMessage | None = None
        # Records of the last batch being published while the next batch is stored
        # (the outbox covers a crash meanwhile). At most one in flight.
        self._publishing: asyncio.Task[None] | None = None

    def stop(self) -> None:
        if not self.stopping.is_set():
            log.info("worker_stopping")
            self.stopping.set()

    @property
    def ready(self) -> bool:
        return self.consuming.is_set() and self.store is not None and not self.store.failing

    async def run(self) -> None:
        async with serve_health(self.metrics, lambda: self.ready, self.settings.worker_port):
            await self._run()

    async def _run(self) -> None:
        pool = await self._open_pool()
        if pool is None:
            return
        self.store = store = Store(pool, retry_max_seconds=self.settings.db_retry_max_seconds)
        self.metrics.database_up.set_function(lambda: 0.0 if store.failing else 1.0)
        link = BrokerLink(
            self.settings.amqp_url, self.settings.topology(), name="cdrflow-worker-records"
        )
        await link.start()
        publisher = RecordPublisher(
            link,
            pool,
            exchange=self.settings.records_exchange,
            confirm_timeout=self.settings.confirm_timeout,
            grace_seconds=self.settings.outbox_grace_seconds,
            interval_seconds=self.settings.outbox_interval_seconds,
            retention_days=self.settings.delivery_retention_days,
        )
        relay = asyncio.create_task(publisher.run(self.stopping), name="outbox-relay")
        deadline = asyncio.create_task(self._abandon_after_stop(), name="shutdown-deadline")
        try:
            await self._consume_forever(publisher)
        finally:
            await self._publish_done()
            deadline.cancel()
            await relay
            await link.close()
            await pool.close()
            log.info("worker_stopped")

    async def _abandon_after_stop(self) -> None:
        await self.stopping.wait()
        await asyncio.sleep(self.settings.shutdown_timeout)
        if self.store is not None:
            log.warning("worker_handing_back", reason="database still unavailable at shutdown")
            self.store.abandon.set()

    async def _open_pool(self) -> asyncpg.Pool | None:
        """Wait for a reachable database with the current schema (or for stop)."""
        delay = 0.5
        url = self.settings.database_url
        while not self.stopping.is_set():
            try:
                connection = await asyncpg.connect(url)
                try:
                    version = await schema_version(connection)
                finally:
                    await connection.close()
                if version >= LATEST:
                    return await create_pool(url, self.settings.db_pool_size)
                log.error(
                    "database_schema_outdated",
                    version=version,
                    needed=LATEST,
                    hint="run `cdrflow migrate`",
                )
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning(
                    "database_unavailable", error=f"{type(exc).__name__}: {exc}", retry_in=delay
                )
            await self._pause(delay)
            delay = min(delay * 2, 30.0)
        return None

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)

    async def _consume_forever(self, publisher: RecordPublisher) -> None:
        delay = 0.25
        while not self.stopping.is_set():
            try:
                await self._consume(publisher)
                delay = 0.25
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "consumer_interrupted", error=f"{type(exc).__name__}: {exc}", retry_in=delay
                )
            if not self.stopping.is_set():
                await self._pause(delay)
                delay = min(delay * 2, 10.0)

    async def _consume(self, publisher: RecordPublisher) -> None:
        settings = self.settings
        connection = await connect(settings.amqp_url, "cdrflow-worker")
        lost = asyncio.Event()
        try:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=settings.effective_prefetch)
            await declare(channel, settings.topology())
            queue = await channel.get_queue(settings.raw_queue, ensure=False)
            connection.close_callbacks.add(lambda *_: lost.set())
            channel.close_callbacks.add(lambda *_: lost.set())
            inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()

            async def take(message: AbstractIncomingMessage) -> None:
                inbox.put_nowait(message)

            tag = await queue.consume(take, no_ack=False)
            self.consuming.set()
            log.info(
                "worker_consuming", queue=settings.raw_queue, prefetch=settings.effective_prefetch
            )
            while not self.stopping.is_set() and not lost.is_set():
                messages = await self._collect(inbox, lost)
                if messages:
                    await self._handle(messages, publisher)
            if lost.is_set():
                raise ConnectionError("connection to RabbitMQ lost")
            # Stopping: take no more work, finish what is in hand.
            await queue.cancel(tag)
            await asyncio.sleep(0)  # let deliveries already read off the socket land
            while self._held is not None or not inbox.empty():
                messages = await self._collect(inbox, lost, wait=False)
                if not messages:
                    break
                await self._handle(messages, publisher)
        finally:
            self.consuming.clear()
            self._held = None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), 5)

    async def _collect(
        self, inbox: asyncio.Queue[AbstractIncomingMessage], lost: asyncio.Event, wait: bool = True
    ) -> list[AbstractIncomingMessage]:
        settings = self.settings
        first = self._held
        self._held = None
        while first is None:
            if not wait:
                if inbox.empty():
                    return []
            elif self.stopping.is_set() or lost.is_set():
                return []
            with contextlib.suppress(TimeoutError):
                first = await asyncio.wait_for(inbox.get(), 0.25)
        messages = [first]
        if _isolated(first):
            return messages
        envelopes = _envelope_count(first)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settings.batch_wait_ms / 1000
        while envelopes < settings.batch_size and len(messages) < settings.effective_prefetch:
            if inbox.empty():
                remaining = deadline - loop.time()
                if not wait or remaining <= 0 or lost.is_set():
                    break
                try:
                    message = await asyncio.wait_for(inbox.get(), remaining)
                except TimeoutError:
                    break
            else:
                message = inbox.get_nowait()
            if _isolated(message):
                self._held = message
                break
            messages.append(message)
            envelopes += _envelope_count(message)
        return messages

    async def _handle(
        self, messages: list[AbstractIncomingMessage], publisher: RecordPublisher
    ) -> None:
        assert self.store is not None
        started = time.perf_counter()
        batch = Normalized()
        decoded = []
        for message in messages:
            try:
                envelopes = decode_batch(message.body)
            except EnvelopeError as exc:
                # Retrying cannot make it readable: park it for an operator to look at.
                log.error("message_parked", reason=str(exc), message_id=message.message_id)
                await message.reject(requeue=False)
                self.metrics.parked.inc()
                continue
            for envelope in envelopes:
                batch.extend(normalize_envelope(envelope, self.sources, self.providers))
            decoded.append(message)
        if not decoded:
            return
        result = await self.store.write(batch)
        for message in decoded:
            await message.ack()
        elapsed = time.perf_counter() - started
        self._count(batch, result, elapsed)
        log.info(
            "batch_stored",
            messages=len(decoded),
            deliveries=len(batch.deliveries),
            new_deliveries=result.fresh,
            versions=result.versions,
            to_publish=len(result.published),
            rejected=len(result.rejected),
            ms=round(elapsed * 1000, 1),
        )
        await self._publish_done()
        if result.published:
            self._publishing = asyncio.create_task(self._publish(publisher, result))

    async def _publish(self, publisher: RecordPublisher, result: BatchResult) -> None:
        self.metrics.published.inc(await publisher.publish(result.published))

    async def _publish_done(self) -> None:
        task, self._publishing = self._publishing, None
        if task is not None:
            try:
                await task
            except Exception:
                # The outbox rows stay; the relay publishes them after the grace period.
                log.exception("records_publish_failed")

    def _count(self, batch: Normalized, result: BatchResult, elapsed: float) -> None:
        metrics = self.metrics
        metrics.batches.inc()
        metrics.batch_seconds.observe(elapsed)
        revisions = sum(1 for e in result.published if e.revision > 1)
        metrics.deliveries.labels("new_record").inc(len(result.published) - revisions)
        metrics.deliveries.labels("revision").inc(revisions)
        metrics.deliveries.labels("duplicate").inc(result.fresh - len(result.published))
        metrics.deliveries.labels("seen_before").inc(len(batch.deliveries) - result.fresh)
        for rejection in result.rejected:
            metrics.rejected.labels(str(rejection.reason)).inc()


def _envelope_count(message: AbstractIncomingMessage) -> int:
    count = (message.headers or {}).get(COUNT_HEADER, 1)
    return count if isinstance(count, int) and count > 0 else 1


def _isolated(message: AbstractIncomingMessage) -> bool:
    count = (message.headers or {}).get("x-delivery-count", 0)
    return isinstance(count, int) and count >= ISOLATE_AFTER
