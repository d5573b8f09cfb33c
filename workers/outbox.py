"""Publishing committed records on `cdr.records`, at least once.

Right after a batch commits, its new records and revisions are published with publisher
confirms and their outbox rows deleted. A worker that dies in between leaves the rows: the
relay of any worker publishes outbox rows older than `outbox_grace_seconds`.

Whoever publishes a row holds its row lock from before the publish until the delete
commits: the batch's own publisher and every relay claim rows with FOR UPDATE SKIP LOCKED,
and a publisher takes only rows still there. So a row is published by one of them, however
long the batch's transaction stayed open (the grace period only spares the relay rows the
batch's publisher is about to take); it is published twice only when a process dies, or
loses the database, between the broker's confirm and the delete's commit. `message_id` =
`{record_id}:{revision}` tells a consumer that it is the same.

The outbox is a ring of partitions (migration 6), written in turn, 5,000 rows each, so that
its deleted rows never pile up waiting for a vacuum: each relay round truncates every
partition that is not being written to and holds no row left to publish
(`reclaim_drained`), and, once no row was written for a whole round, the one being written
to as well. Publishers and relays name the partition they claim from, so that a partition
nobody writes to is locked by nobody and its TRUNCATE never waits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime

import aio_pika
import asyncpg
from aio_pika import DeliveryMode
from asyncpg.pool import PoolConnectionProxy
from tenacity import RetryCallState

from cdrflow.amqp import BrokerLink
from cdrflow.backoff import is_loud, retry_fields, retrying, sleep_unless
from cdrflow.logs import get_logger
from workers.batch import OutboxEntry
from workers.records_publisher import publish_records, record_outgoing
from workers.storage.database import is_transient

log = get_logger("cdrflow.worker.outbox")

Connection = asyncpg.Connection | PoolConnectionProxy

RELAY_BATCH = 500

# The outbox's partitions, by slot (workers/storage/migrations/0006_outbox_ring.sql).
PARTITIONS = tuple(f"outbox_{slot}" for slot in range(4))
_CLAIM_STALE = """
SELECT outbox_id, slot, record_id, revision, routing_key, body FROM {partition}
WHERE created_at < now() - make_interval(secs => $1)
ORDER BY outbox_id LIMIT $2
FOR UPDATE SKIP LOCKED
"""
_CLAIM_OWN = """
SELECT outbox_id FROM {partition} WHERE outbox_id = ANY($1::bigint[])
ORDER BY outbox_id
FOR UPDATE SKIP LOCKED
"""
_DELETE = "DELETE FROM {partition} WHERE outbox_id = ANY($1::bigint[])"
_WRITTEN_TO = "SELECT last_value, outbox_slot_of(last_value) AS slot FROM outbox_slot_seq"
_HAS_PAGES = "SELECT pg_relation_size($1::regclass) > 0"


def record_message(entry: OutboxEntry) -> aio_pika.Message:
    """The message `record_outgoing` describes, as aio-pika publishes it (`cdrflow
    republish`)."""
    outgoing = record_outgoing(entry, int(time.time()))
    return aio_pika.Message(
        outgoing.body,
        delivery_mode=DeliveryMode.PERSISTENT,
        message_id=outgoing.message_id,
        content_type=outgoing.content_type,
        timestamp=datetime.fromtimestamp(outgoing.timestamp, UTC),
        headers=dict(outgoing.headers),
        type=outgoing.message_type,
    )


class RecordPublisher:
    def __init__(
        self,
        link: BrokerLink,
        pool: asyncpg.Pool,
        *,
        exchange: str,
        confirm_timeout: float,
        grace_seconds: float,
        interval_seconds: float,
        retry_max_seconds: float = 30.0,
    ) -> None:
        self.link = link
        self.pool = pool
        self.exchange = exchange
        self.confirm_timeout = confirm_timeout
        self.grace_seconds = grace_seconds
        self.interval_seconds = interval_seconds
        self.retry_max_seconds = retry_max_seconds
        self.database_ok = True  # as of the relay's last look at the database
        # The outbox rows counted when the last reclaim looked (outbox_slot_seq).
        self._rows_counted: int | None = None

    async def publish(self, entries: Sequence[OutboxEntry]) -> int:
        """Publish committed records and forget the confirmed ones. Returns how many were
        confirmed; the rest stay in the outbox for the relay."""
        if not entries:
            return 0
        confirmed: list[OutboxEntry] = []
        slots = sorted({e.slot for e in entries})
        try:
            async with self.pool.acquire() as connection, connection.transaction():
                claimed: set[int] = set()
                for slot in slots:
                    rows = await connection.fetch(
                        _CLAIM_OWN.format(partition=PARTITIONS[slot]),
                        [e.outbox_id for e in entries if e.slot == slot],
                    )
                    claimed.update(row["outbox_id"] for row in rows)
                # A row missing here was taken by a relay (published, or being published).
                confirmed = await self._publish_all([e for e in entries if e.outbox_id in claimed])
                await _delete(connection, confirmed)
        except Exception as exc:
            if not is_transient(exc):
                raise
            # Rolled back: the rows stay, and the relay publishes them after the grace period.
            log.warning("outbox_publish_deferred", count=len(entries), error=str(exc))
            return 0
        return len(confirmed)

    async def _publish_all(self, entries: Sequence[OutboxEntry]) -> list[OutboxEntry]:
        results = await publish_records(
            self.link, entries, exchange=self.exchange, timeout=self.confirm_timeout
        )
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            log.warning(
                "records_not_published",
                count=len(failures),
                error=f"{type(failures[0]).__name__}: {failures[0]}",
                will_retry_in=self.grace_seconds,
            )
        return [e for e, r in zip(entries, results, strict=True) if r is None]

    async def relay_once(self) -> int:
        """Publish outbox rows left behind (older than the grace period), at most
        `RELAY_BATCH` of each partition. Returns how many were confirmed."""
        published = 0
        for partition in PARTITIONS:
            published += await self._relay_partition(partition)
        return published

    async def _relay_partition(self, partition: str) -> int:
        claim = _CLAIM_STALE.format(partition=partition)
        async with self.pool.acquire() as connection, connection.transaction():
            rows = await connection.fetch(claim, self.grace_seconds, RELAY_BATCH)
            if not rows:
                return 0
            entries = [
                OutboxEntry(
                    r["outbox_id"],
                    r["record_id"],
                    r["revision"],
                    r["routing_key"],
                    r["body"],
                    r["slot"],
                )
                for r in rows
            ]
            confirmed = await self._publish_all(entries)
            await _delete(connection, confirmed)
        log.info("outbox_relayed", published=len(confirmed), pending=len(entries) - len(confirmed))
        return len(confirmed)

    async def reclaim_drained(self) -> int:
        """TRUNCATE each outbox partition that is not being written to and holds no row
        left to publish: the space of its deleted rows comes back now, not at the next
        vacuum. The partition being written to is truncated too once the outbox is idle:
        no row was written since the previous call (a relay interval ago). Under load it
        is left alone, so that writers never wait behind its lock; it holds at most its
        5,000 rows. Returns how many were truncated."""
        truncated = 0
        async with self.pool.acquire() as connection:
            written = await connection.fetchrow(_WRITTEN_TO)
            assert written is not None
            idle = written["last_value"] == self._rows_counted
            self._rows_counted = written["last_value"]
            for slot, partition in enumerate(PARTITIONS):
                if (idle or slot != written["slot"]) and await _truncate_if_drained(
                    connection, partition
                ):
                    truncated += 1
        return truncated

    async def run(self, stopping: asyncio.Event) -> None:
        """The relay loop, until `stopping` is set. It also tells, through `database_ok`,
        whether the database answers, for an idle worker's readiness."""
        while not stopping.is_set():
            try:
                async for attempt in retrying(
                    stop=stopping,
                    max_wait=self.retry_max_seconds,
                    retry_on=is_transient,
                    on_retry=self._deferred,
                ):
                    with attempt:
                        await self._relay_round()
                self.database_ok = True
            except Exception as exc:
                if not is_transient(exc):  # a transient one here means: stopped meanwhile
                    log.exception("outbox_relay_failed")
            await sleep_unless(stopping, self.interval_seconds)

    async def _relay_round(self) -> None:
        if self.link.ready:
            while await self.relay_once() >= RELAY_BATCH:
                pass
        else:
            await self.pool.fetchval("SELECT 1")
        truncated = await self.reclaim_drained()
        if truncated:
            log.debug("outbox_partitions_truncated", count=truncated)

    def _deferred(self, state: RetryCallState) -> None:
        self.database_ok = False
        level = log.warning if is_loud(state) else log.debug
        level("outbox_relay_deferred", **retry_fields(state))


async def _delete(connection: Connection, entries: Sequence[OutboxEntry]) -> None:
    for slot in sorted({e.slot for e in entries}):
        ids = [e.outbox_id for e in entries if e.slot == slot]
        await connection.execute(_DELETE.format(partition=PARTITIONS[slot]), ids)


async def _truncate_if_drained(connection: Connection, partition: str) -> bool:
    """TRUNCATE `partition` if it has pages and no row. The exclusive lock comes first
    (NOWAIT: a partition in use is left for the next round), so no transaction that wrote
    to it or deletes from it is still open: under READ COMMITTED the check that follows
    sees every row committed, and a row committed is never truncated unpublished."""
    if not await connection.fetchval(_HAS_PAGES, partition):
        return False  # empty since its last TRUNCATE: a new one would only churn files
    try:
        async with connection.transaction(isolation="read_committed"):
            await connection.execute(f"LOCK TABLE {partition} IN ACCESS EXCLUSIVE MODE NOWAIT")
            if await connection.fetchval(f"SELECT EXISTS (SELECT FROM {partition})"):  # noqa: S608
                return False
            await connection.execute(f"TRUNCATE {partition}")
    except asyncpg.LockNotAvailableError:
        return False
    return True
