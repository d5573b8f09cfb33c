"""`cdrflow worker`: one stateless competing consumer of `cdr.raw`.

Each batch (see `workers.batching`) is normalized and stored in one transaction, and only
then are its messages acknowledged; its records are published after that (outbox).

- A message that is not an envelope batch is parked at once (rejected to `cdr.dead`).
- A batch that fails for a reason other than the database (a bug) is handed back with a
  nack, alone: the connection and the other messages in hand are untouched.
- A redelivered message is processed alone; one that holds several callbacks is first split
  into one message per callback. So a callback that keeps crashing workers takes only
  itself to `cdr.dead` when the delivery limit runs out.
- While PostgreSQL is down the batch is held (not acked, not dropped) and retried with
  backoff; prefetch, sized to about one batch of callbacks, stops the broker handing more.
- SIGTERM: cancel the consumer, finish the messages in hand, publish, exit. If the database
  stays down past `shutdown_timeout`, the messages are handed back to the broker instead."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Mapping

import asyncpg
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue

from cdrflow.amqp import BrokerLink, connect, declare, raw_message
from cdrflow.logs import get_logger
from cdrflow.settings import Settings
from schemas.envelope import (
    EnvelopeError,
    RawEnvelope,
    decode_batch,
)
from schemas.providers import Provider
from schemas.sources import Source
from workers.batching import Inbox, redeliveries
from workers.db import create_pool
from workers.metrics import WorkerMetrics, serve_health
from workers.migrate import LATEST, schema_version
from workers.normalize import Normalized, normalize_envelope
from workers.outbox import RecordPublisher
from workers.store import BatchResult, Store

log = get_logger("cdrflow.worker")


class SessionLost(Exception):
    """The channel to RabbitMQ is gone: the messages in hand are the broker's again."""


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
        self.publisher: RecordPublisher | None = None
        # Records of the last batch being published while the next batch is stored
        # (the outbox covers a crash meanwhile). At most one in flight.
        self._publishing: asyncio.Task[None] | None = None
        self._session: _Session | None = None
        self._pausing: set[asyncio.Task[None]] = set()

    def stop(self) -> None:
        if not self.stopping.is_set():
            log.info("worker_stopping")
            self.stopping.set()

    @property
    def ready(self) -> bool:
        return (
            self.consuming.is_set()
            and self.store is not None
            and not self.store.failing
            and self.publisher is not None
            and self.publisher.database_ok
        )

    async def run(self) -> None:
        async with serve_health(self.metrics, lambda: self.ready, self.settings.worker_port):
            await self._run()

    async def _run(self) -> None:
        pool = await self._open_pool()
        if pool is None:
            return
        settings = self.settings
        self.store = store = Store(pool, retry_max_seconds=settings.db_retry_max_seconds)
        store.on_failing = self._database_down
        link = BrokerLink(settings.amqp_url, settings.topology(), name="cdrflow-worker-records")
        await link.start()
        self.publisher = publisher = RecordPublisher(
            link,
            pool,
            exchange=settings.records_exchange,
            confirm_timeout=settings.confirm_timeout,
            grace_seconds=settings.outbox_grace_seconds,
            interval_seconds=settings.outbox_interval_seconds,
            retention_days=settings.delivery_retention_days,
        )
        self.metrics.database_up.set_function(
            lambda: 0.0 if store.failing or not publisher.database_ok else 1.0
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

    def _inbox(self) -> Inbox[AbstractIncomingMessage]:
        settings = self.settings
        # Until messages show how many callbacks they hold, assume they are full.
        first_guess = math.ceil(settings.batch_size / max(1, settings.coalesce_max_envelopes))
        return Inbox(
            settings.batch_size,
            settings.batch_wait_ms,
            settings.effective_prefetch,
            first_guess,
            batch_bytes=settings.batch_max_bytes,
        )

    async def _consume(self, publisher: RecordPublisher) -> None:
        settings = self.settings
        connection = await connect(settings.amqp_url, "cdrflow-worker")
        lost = asyncio.Event()
        inbox = self._inbox()
        try:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=inbox.prefetch)
            await declare(channel, settings.topology())
            queue = await channel.get_queue(settings.raw_queue, ensure=False)
            connection.close_callbacks.add(lambda *_: lost.set())
            channel.close_callbacks.add(lambda *_: lost.set())
            session = _Session(queue, inbox)
            await session.subscribe()
            self._session = session
            self.consuming.set()
            log.info("worker_consuming", queue=settings.raw_queue, prefetch=inbox.prefetch)
            while not self.stopping.is_set() and not lost.is_set():
                batch = await inbox.next_batch(lambda: self.stopping.is_set() or lost.is_set())
                if not batch:
                    continue
                prefetch = inbox.resize(batch)
                if prefetch is not None and not session.paused:
                    # basic.qos binds consumers created after it: subscribe anew. The
                    # messages in hand stay ours (cancel does not requeue them).
                    await session.unsubscribe()
                    await channel.set_qos(prefetch_count=prefetch)
                    await session.subscribe()
                    log.info("prefetch_resized", prefetch=prefetch)
                await self._settle(batch, publisher, lost)
                if session.paused and not lost.is_set() and not self.stopping.is_set():
                    await channel.set_qos(prefetch_count=inbox.prefetch)
                    await session.subscribe()
                    log.info("consuming_resumed")
            if lost.is_set():
                raise SessionLost("connection to RabbitMQ lost")
            # Stopping: take no more work, finish what is in hand (or give it back).
            await session.unsubscribe()
            await asyncio.sleep(0)  # let deliveries already read off the socket land
            while batch := await inbox.next_batch(lost.is_set, wait=False):
                if self.store is not None and self.store.abandon.is_set():
                    await _give_back([*batch, *inbox.take_all()])
                    break
                await self._settle(batch, publisher, lost)
        finally:
            self._session = None
            self.consuming.clear()
            inbox.clear()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), 5)

    def _database_down(self) -> None:
        """The store has started retrying: take nothing more and give back what is in hand
        but not in the held batch, so a stalled worker holds one batch and no more."""
        session = self._session
        if session is not None and not session.paused:
            task = asyncio.create_task(session.pause())
            self._pausing.add(task)
            task.add_done_callback(self._pausing.discard)

    async def _settle(
        self,
        batch: list[AbstractIncomingMessage],
        publisher: RecordPublisher,
        lost: asyncio.Event,
    ) -> None:
        """Handle a batch; if that fails for any reason but a lost channel, hand exactly
        this batch back to the broker, which counts a delivery for each."""
        unsettled = list(batch)
        try:
            await self._handle(unsettled, publisher)
        except Exception as exc:
            if lost.is_set():
                raise SessionLost("connection to RabbitMQ lost") from exc
            log.exception("batch_failed", messages=len(unsettled))
            await _give_back(unsettled)

    async def _handle(
        self, unsettled: list[AbstractIncomingMessage], publisher: RecordPublisher
    ) -> None:
        """Store a batch and acknowledge it. Removes each message from `unsettled` as soon as
        the broker has been told what became of it."""
        assert self.store is not None
        started = time.perf_counter()
        batch = Normalized()
        decoded = []
        for message in list(unsettled):
            try:
                envelopes = decode_batch(message.body)
            except EnvelopeError as exc:
                # Retrying cannot make it readable: park it for an operator to look at.
                log.error("message_parked", reason=str(exc), message_id=message.message_id)
                await message.reject(requeue=False)
                unsettled.remove(message)
                self.metrics.parked.inc()
                continue
            split = redeliveries(message) and len(envelopes) > 1
            if split and await self._split(message, envelopes, publisher.link):
                unsettled.remove(message)
                continue
            for envelope in envelopes:
                batch.extend(normalize_envelope(envelope, self.sources, self.providers))
            decoded.append(message)
        if not decoded:
            return
        result = await self.store.write(batch)
        for message in decoded:
            await message.ack()
            unsettled.remove(message)
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

    async def _split(
        self, message: AbstractIncomingMessage, envelopes: list[RawEnvelope], link: BrokerLink
    ) -> bool:
        """Re-queue each callback of a redelivered message as a message of its own, then
        drop the original: from now on each callback has its own delivery count. When the
        broker cannot take them right now, say so: the message is then processed whole
        (it is alone anyway), never handed back for a reason that is not its own."""
        if not link.ready:
            return False
        try:
            await self._publish_split(envelopes, link)
        except Exception as exc:
            log.warning("message_split_failed", message_id=message.message_id, error=str(exc))
            return False
        await message.ack()
        log.warning(
            "message_split",
            message_id=message.message_id,
            callbacks=len(envelopes),
            redeliveries=redeliveries(message),
        )
        return True

    async def _publish_split(self, envelopes: list[RawEnvelope], link: BrokerLink) -> None:
        await asyncio.gather(
            *(
                link.publish(
                    raw_message([envelope.encode()]),
                    self.settings.raw_queue,
                    mandatory=True,
                    timeout=self.settings.confirm_timeout,
                )
                for envelope in envelopes
            )
        )

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


async def _give_back(messages: list[AbstractIncomingMessage]) -> None:
    """Return messages to the queue. basic.reject (not nack): RabbitMQ 4.3+ counts a
    delivery for a reject only, and the count is what parks a crash-looping message."""
    for message in messages:
        await message.reject(requeue=True)


class _Session:
    """One subscription to the raw queue, which can pause while the database is down."""

    def __init__(self, queue: AbstractQueue, inbox: Inbox[AbstractIncomingMessage]) -> None:
        self.queue = queue
        self.inbox = inbox
        self.tag: str | None = None
        self.paused = False

    async def _take(self, message: AbstractIncomingMessage) -> None:
        self.inbox.put(message)

    async def subscribe(self) -> None:
        self.tag = await self.queue.consume(self._take, no_ack=False)
        self.paused = False

    async def unsubscribe(self) -> None:
        tag, self.tag = self.tag, None
        if tag is not None:
            await self.queue.cancel(tag)  # returns once no more deliveries can arrive

    async def pause(self) -> None:
        self.paused = True
        await self.unsubscribe()
        returned = self.inbox.take_all()
        await _give_back(returned)
        log.warning("consuming_paused", reason="database unavailable", returned=len(returned))
