"""A minimal, correct downstream consumer of cdrflow's call records.

It keeps the latest revision of every call record in a table of its own:

- its own durable quorum queue, bound to the `cdr.records` exchange with your patterns
  (a queue survives restarts of the consumer and of RabbitMQ; nothing is lost meanwhile);
- manual acks, sent only after the transaction holding the record has committed;
- dedup on `message_id` (`{record_id}:{revision}`): delivery is at least once, so the same
  message can come twice; the second one is acknowledged and changes nothing;
- the highest `revision` per `record_id` wins, whatever order revisions arrive in.

Run it (Python 3.11+, `pip install aio-pika asyncpg`; cdrflow's venv has both):

    python deploy/examples/consumer.py --queue billing.records --binding 'dev.#'

A binding is a topic pattern over `{tenant}.{provider}.{event}.{status}`: `dev.#` takes
every record of the tenant `dev` (the tenant of `make run`'s sources). A binding that
matches no record is not an error anywhere, so the consumer says so in its log after
`--quiet-seconds` (60) without a message, and again every time as long.

Settings: --amqp-url / AMQP_URL, --database-url / CONSUMER_DATABASE_URL (a database of
your own, created when missing; so are the schema and tables), --schema (default
`records_consumer`). Stop it with SIGTERM or Ctrl-C: it stops taking messages, finishes
those in hand, and exits.
`seen_messages` grows by one row per message: prune rows older than your longest replay
(e.g. 35 days) from a cron job."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import signal
from typing import Any

import aio_pika
import asyncpg
from aio_pika.abc import AbstractIncomingMessage

log = logging.getLogger("consumer")

PREFETCH = 100  # messages in hand at once: each is one short transaction
RETRY_SECONDS = 5.0

TABLES = """
CREATE SCHEMA IF NOT EXISTS {schema};
CREATE TABLE IF NOT EXISTS {schema}.calls (
    record_id   uuid PRIMARY KEY,
    revision    integer NOT NULL,
    tenant      text NOT NULL,
    source      text NOT NULL,
    external_id text NOT NULL,
    status      text NOT NULL,
    ended_at    timestamptz,
    talk_seconds integer,
    currency    text NOT NULL,
    cost        numeric,           -- a decimal string in the message: never a float
    record      jsonb NOT NULL,    -- the whole message, for fields not in a column
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS {schema}.seen_messages (
    message_id text PRIMARY KEY,
    seen_at    timestamptz NOT NULL DEFAULT now()
);
"""
FIRST_SIGHT = """
INSERT INTO {schema}.seen_messages (message_id) VALUES ($1)
ON CONFLICT DO NOTHING RETURNING message_id
"""
KEEP_HIGHEST_REVISION = """
INSERT INTO {schema}.calls AS c (record_id, revision, tenant, source, external_id, status,
    ended_at, talk_seconds, currency, cost, record)
VALUES ($1::text::uuid, $2, $3, $4, $5, $6, $7::text::timestamptz, $8, $9, $10::text::numeric,
    $11::jsonb)
ON CONFLICT (record_id) DO UPDATE SET
    revision = excluded.revision, tenant = excluded.tenant, status = excluded.status,
    ended_at = excluded.ended_at, talk_seconds = excluded.talk_seconds,
    currency = excluded.currency, cost = excluded.cost, record = excluded.record,
    updated_at = now()
WHERE c.revision < excluded.revision
"""


class Consumer:
    def __init__(self, pool: asyncpg.Pool, schema: str) -> None:
        self.pool = pool
        self.first_sight = FIRST_SIGHT.format(schema=schema)
        self.keep = KEEP_HIGHEST_REVISION.format(schema=schema)
        self.in_hand = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self.received = asyncio.Event()

    async def handle(self, message: AbstractIncomingMessage) -> None:
        self.received.set()
        self.in_hand += 1
        self.idle.clear()
        try:
            await self._handle(message)
        finally:
            self.in_hand -= 1
            if not self.in_hand:
                self.idle.set()

    async def finish_in_hand(self, timeout: float = 30.0) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.idle.wait(), timeout)

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        try:
            record = json.loads(message.body)
            values = _columns(record)
        except (ValueError, KeyError, TypeError) as exc:
            log.error("not a call record, dropped: %s %s", message.message_id, exc)
            await message.reject(requeue=False)  # it would fail again: do not loop on it
            return
        try:
            async with self.pool.acquire() as connection, connection.transaction():
                if await connection.fetchval(self.first_sight, message.message_id) is not None:
                    await connection.execute(self.keep, *values)
        except (asyncpg.PostgresError, OSError) as exc:
            log.warning("database: %s; message %s handed back", exc, message.message_id)
            await asyncio.sleep(RETRY_SECONDS)
            await message.nack(requeue=True)
            return
        await message.ack()  # only now: the record is committed


async def say_when_quiet(consumer: Consumer, bindings: list[str], seconds: float) -> None:
    """A binding that matches nothing looks exactly like a quiet day: say which it is
    likely to be, every `seconds` without a message."""
    while True:
        consumer.received.clear()
        try:
            await asyncio.wait_for(consumer.received.wait(), seconds)
        except TimeoutError:
            log.warning(
                "no record in %ss on bindings %s: a binding matches routing keys"
                " {tenant}.{provider}.{event}.{status} (e.g. dev.nxcloud.voice_dr.answered);"
                " check the tenant of your sources, or whether callbacks arrive at all",
                seconds,
                bindings,
            )


async def ensure_database(url: str) -> None:
    """Create the consumer's database when it does not exist yet (needs CREATEDB)."""
    try:
        connection = await asyncpg.connect(url)
    except asyncpg.InvalidCatalogNameError:
        server, _, name = url.partition("?")[0].rpartition("/")
        admin = await asyncpg.connect(f"{server}/postgres")
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        except asyncpg.DuplicateDatabaseError:
            pass  # another consumer created it meanwhile
        finally:
            await admin.close()
        log.info("created database %s", name)
        return
    await connection.close()


def _columns(record: dict[str, Any]) -> tuple[Any, ...]:
    return (
        record["record_id"],
        int(record["revision"]),
        record["tenant"],
        record["source"],
        record["external_id"],
        record["status"],
        record.get("ended_at"),
        record.get("talk_seconds"),
        record.get("currency") or "USD",
        record.get("cost"),
        json.dumps(record),
    )


async def consume(args: argparse.Namespace, consumer: Consumer, stopping: asyncio.Event) -> None:
    """One connection's life: declare, bind, consume until stopped or disconnected."""
    connection = await aio_pika.connect(args.amqp_url)
    try:
        lost = asyncio.Event()
        connection.close_callbacks.add(lambda *_: lost.set())
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=PREFETCH)
        exchange = await channel.declare_exchange(
            args.exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(
            args.queue, durable=True, arguments={"x-queue-type": "quorum"}
        )
        bindings = args.binding or ["#"]
        for binding in bindings:
            await queue.bind(exchange, routing_key=binding)
        tag = await queue.consume(consumer.handle)
        log.info("consuming %s (bindings %s)", args.queue, bindings)
        quiet = asyncio.create_task(say_when_quiet(consumer, bindings, args.quiet_seconds))
        waits = [asyncio.create_task(e.wait()) for e in (stopping, lost)]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for waiting in [*waits, quiet]:
            waiting.cancel()
        if not lost.is_set():
            await queue.cancel(tag)
            await consumer.finish_in_hand()  # anything still unacked goes back to the queue
    finally:
        await connection.close()


async def main(args: argparse.Namespace) -> None:
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", args.schema):
        raise SystemExit(f"--schema {args.schema!r}: lower-case letters, digits and _ only")
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stopping.set)
    await ensure_database(args.database_url)
    pool = await asyncpg.create_pool(args.database_url, min_size=1, max_size=4)
    try:
        await pool.execute(TABLES.format(schema=args.schema))
        consumer = Consumer(pool, args.schema)
        while not stopping.is_set():
            try:
                await consume(args, consumer, stopping)
            except (aio_pika.exceptions.AMQPError, OSError) as exc:
                log.warning("RabbitMQ: %s; reconnecting in %ss", exc, RETRY_SECONDS)
            if not stopping.is_set():
                await asyncio.sleep(RETRY_SECONDS)
    finally:
        await pool.close()


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Keep cdrflow's call records in a table.")
    parser.add_argument(
        "--amqp-url", default=os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get(
            "CONSUMER_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/records_consumer"
        ),
    )
    parser.add_argument("--exchange", default="cdr.records")
    parser.add_argument("--queue", default="records_consumer", help="your durable queue")
    parser.add_argument("--binding", action="append", help="topic pattern (repeat; default #)")
    parser.add_argument("--schema", default="records_consumer")
    parser.add_argument(
        "--quiet-seconds",
        type=float,
        default=60.0,
        help="log a warning after this long without a message (60)",
    )
    return parser.parse_args()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    asyncio.run(main(_arguments()))
