"""What a worker does with one batch of raw messages: decode, normalize, store, ack,
publish. Each step calls down; what happens to a message that fails is decided here:

- a message that is not an envelope batch is parked at once (rejected to `cdr.dead`);
- a redelivered message holding several callbacks is split first (`workers.split`);
- the batch is stored in one transaction (`workers.storage.writer`), and only then acknowledged;
- its records are published while the next batch is stored (the outbox covers a crash).

Anything else that fails raises: the consumer hands the messages still unsettled back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

from aio_pika.abc import AbstractIncomingMessage

from cdrflow.logs import get_logger
from schemas.envelope import EnvelopeError, RawEnvelope, decode_batch
from schemas.providers import Provider
from schemas.sources import Source
from workers.batch import BatchResult, Normalized, OutboxEntry
from workers.batching import redeliveries
from workers.normalize import normalize_envelope
from workers.outbox import RecordPublisher
from workers.split import Splitter
from workers.storage.writer import Store
from workers.worker_metrics import WorkerMetrics

log = get_logger("cdrflow.worker")

Decoded = list[tuple[AbstractIncomingMessage, list[RawEnvelope]]]


class Pipeline:
    def __init__(
        self,
        sources: Mapping[str, Source],
        providers: Mapping[str, Provider],
        store: Store,
        publisher: RecordPublisher,
        splitter: Splitter,
        metrics: WorkerMetrics,
    ) -> None:
        self.sources = sources
        self.providers = providers
        self.store = store
        self.publisher = publisher
        self.splitter = splitter
        self.metrics = metrics
        # The records of the last batch, published while the next batch is stored.
        self._publishing: asyncio.Task[None] | None = None

    async def process_batch(self, unsettled: list[AbstractIncomingMessage]) -> None:
        """Removes each message from `unsettled` once the broker knows what became of it."""
        started = time.perf_counter()
        decoded = await self._decode(unsettled)
        if not decoded:
            return
        normalized = Normalized()
        for _, envelopes in decoded:
            for envelope in envelopes:
                normalized.extend(normalize_envelope(envelope, self.sources, self.providers))
        result = await self.store.write(normalized)
        self.metrics.observe_lag(d.received_at for d in normalized.deliveries)
        for message, _ in decoded:
            await message.ack()
            unsettled.remove(message)
        self._report(len(decoded), normalized, result, time.perf_counter() - started)
        await self.wait_for_previous_publish()
        if result.published:
            self._publishing = asyncio.create_task(self._publish(result.published))

    async def _decode(self, unsettled: list[AbstractIncomingMessage]) -> Decoded:
        decoded = []
        for message in list(unsettled):
            if redeliveries(message):
                self.metrics.redelivered.inc()
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
            if split and await self.splitter.split(message, envelopes):
                unsettled.remove(message)
                continue
            decoded.append((message, envelopes))
        return decoded

    async def _publish(self, entries: list[OutboxEntry]) -> None:
        self.metrics.published.inc(await self.publisher.publish(entries))

    async def wait_for_previous_publish(self) -> None:
        task, self._publishing = self._publishing, None
        if task is not None:
            try:
                await task
            except Exception:
                # The outbox rows stay; the relay publishes them after the grace period.
                log.exception("records_publish_failed")

    def _report(
        self, messages: int, normalized: Normalized, result: BatchResult, elapsed: float
    ) -> None:
        log.info(
            "batch_stored",
            messages=messages,
            deliveries=len(normalized.deliveries),
            new_deliveries=result.fresh,
            versions=result.versions,
            to_publish=len(result.published),
            rejected=len(result.rejected),
            ignored_backfills=result.ignored_backfills,
            ms=round(elapsed * 1000, 1),
        )
        metrics = self.metrics
        metrics.batches.inc()
        metrics.batch_seconds.observe(elapsed)
        revisions = sum(1 for e in result.published if e.revision > 1)
        metrics.deliveries.labels("new_record").inc(len(result.published) - revisions)
        metrics.deliveries.labels("revision").inc(revisions)
        metrics.deliveries.labels("backfill_ignored").inc(result.ignored_backfills)
        duplicates = result.fresh - len(result.published) - result.ignored_backfills
        metrics.deliveries.labels("duplicate").inc(duplicates)
        metrics.deliveries.labels("seen_before").inc(len(normalized.deliveries) - result.fresh)
        for rejection in result.rejected:
            metrics.rejected.labels(str(rejection.reason)).inc()
