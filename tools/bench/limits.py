"""The two limits the worker's figures are compared with, measured in the same run:

- publish: persistent single-message publishes to a quorum queue, each confirmed by the
  broker, with aio-pika (the client cdrflow uses), many in flight at once: the broker's
  ceiling for records published one message each;
- database: the staged COPY upsert of the same rows without the rest of the worker: COPY
  a batch into a temporary table, then INSERT ... SELECT ... ON CONFLICT into a copy of
  call_records, one transaction per batch (re-pushes update rows already there)."""

from __future__ import annotations

import asyncio
import itertools
import random
import time

import aio_pika
import asyncpg

from tests.support.env import unique
from tools.bench.options import Options
from tools.bench.services import Services

IN_FLIGHT = 256
BATCH = 500  # the worker's default batch_size
RECORD_BYTES = 1500  # about one published record


async def publish_limit(services: Services, options: Options) -> float:
    """Confirmed publishes per second."""
    connection = await aio_pika.connect(services.amqp_url)
    queue_name = unique("bench.publish-limit")
    try:
        channel = await connection.channel(publisher_confirms=True)
        queue = await channel.declare_queue(
            queue_name, durable=True, arguments={"x-queue-type": "quorum"}
        )
        body = b"x" * RECORD_BYTES
        published = 0
        deadline = time.monotonic() + options.publish_seconds

        async def publisher() -> None:
            nonlocal published
            while time.monotonic() < deadline:
                await channel.default_exchange.publish(
                    aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                    routing_key=queue_name,
                )
                published += 1

        started = time.monotonic()
        await asyncio.gather(*(publisher() for _ in range(IN_FLIGHT)))
        elapsed = time.monotonic() - started
        await queue.delete(if_unused=False, if_empty=False)
    finally:
        await connection.close()
    return published / elapsed


async def database_limit(database_url: str) -> float:
    """Rows per second, from the rows a worker stored in `database_url` (the same mix)."""
    db = await asyncpg.connect(database_url)
    try:
        # A plain table like one month of call_records, and the keys the writer claims first.
        await db.execute("CREATE TABLE bench_limit (LIKE call_records INCLUDING ALL)")
        await db.execute("CREATE TABLE bench_keys (LIKE call_keys INCLUDING ALL)")
        await db.execute("CREATE TEMP TABLE bench_stage (LIKE call_records)")
        columns = [
            r["attname"]
            for r in await db.fetch(
                "SELECT attname FROM pg_attribute WHERE attrelid = 'call_records'::regclass"
                " AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
            )
        ]
        rows = [tuple(r) for r in await db.fetch("SELECT * FROM call_records")]
        batches = _batches(rows)
        claim = (
            "INSERT INTO bench_keys AS k SELECT DISTINCT record_id, stored_at FROM bench_stage"
            " ORDER BY record_id ON CONFLICT (record_id) DO UPDATE SET stored_at = k.stored_at"
            " WHERE false"
        )
        upsert = (
            "INSERT INTO bench_limit AS c SELECT * FROM bench_stage ORDER BY record_id "
            "ON CONFLICT (record_id, stored_at) DO UPDATE SET "
            "delivery_count = c.delivery_count + excluded.delivery_count, "
            "last_seen_at = greatest(c.last_seen_at, excluded.last_seen_at)"
        )
        started = time.monotonic()
        for batch in batches:
            async with db.transaction():
                await db.copy_records_to_table("bench_stage", records=batch, columns=columns)
                await db.execute(claim)
                await db.execute(upsert)
                await db.execute("TRUNCATE bench_stage")
        elapsed = time.monotonic() - started
    finally:
        await db.close()
    return sum(len(b) for b in batches) / elapsed


def _batches(rows: list[tuple[object, ...]]) -> list[list[tuple[object, ...]]]:
    """Batches of the worker's size; one row in ten again a row of an earlier batch (a
    re-push), never twice in one batch (one statement may not touch a key twice)."""
    rng = random.Random(9)
    batches: list[list[tuple[object, ...]]] = []
    fresh = iter(rows)
    seen: list[tuple[object, ...]] = []
    while True:
        batch = list(itertools.islice(fresh, BATCH * 9 // 10))
        if not batch:
            return batches
        if seen:
            batch += rng.sample(seen, min(len(seen), BATCH - len(batch)))
        seen += batch[: BATCH * 9 // 10]
        batches.append(batch)
