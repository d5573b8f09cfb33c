"""The design limit: the same design as cdrflow in one file, with no per-callback logic
beyond what the design itself needs. Its end-to-end rate, measured next to cdrflow's in
the same run, says how much of the gap to the machine is in our code rather than in the
machine.

What it keeps of the design, so the broker and the database do the same kind of work, on
cdrflow's own topology and settings:
- ingress: reads the body, wraps it in a JSON envelope (base64 body), coalesces requests
  into one persistent, mandatory, confirmed message on the quorum raw queue
  (`cdrflow.amqp.raw_message`; 128 envelopes or 2 ms), and answers 200 once the broker
  confirmed it;
- worker: takes messages until they hold 500 callbacks or 50 ms passed, COPYs them into a
  staging table, then in one transaction writes a ledger row per callback and a record per
  distinct callback (keyed by a hash of source and body, ON CONFLICT DO NOTHING: a re-push
  makes a ledger row only and publishes nothing, as in cdrflow);
  then publishes one persistent, confirmed message per new row to the topic exchange (its
  stream and a downstream quorum queue bound) and acks, while the next batch is stored.
- both raise the collector's young threshold, as cdrflow's processes do.
What it leaves out is everything cdrflow does per callback: provider parsing and
normalizing, content hashes, the delivery ledger, revisions, the outbox, metrics and logs.

    python -m tools.bench.onefile ingress PORT
    python -m tools.bench.onefile worker
(with cdrflow's settings in the environment, CDRFLOW_*: the topology is declared by
whoever runs it, as `tools.bench.pipeline.topology` does)"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import sys
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aio_pika
import aiormq
import asyncpg
import orjson
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from aiohttp import web

from cdrflow.amqp import raw_message
from cdrflow.batchpublish import Outgoing, publish_batch
from cdrflow.gc_tuning import tune_gc
from cdrflow.settings import Settings
from workers.batching import envelope_count

TABLE = "onefile_records"
COLUMNS = ("record_key", "ingest_id", "source", "received_at", "content_type", "query", "body")
# A ledger row for every callback, a record for every distinct one (cdrflow keeps both).
CREATE_TABLES = f"""
CREATE TABLE IF NOT EXISTS onefile_deliveries (
    ingest_id uuid PRIMARY KEY, record_key uuid NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS {TABLE} (
    record_key uuid PRIMARY KEY, ingest_id uuid NOT NULL, source text NOT NULL,
    received_at timestamptz NOT NULL, content_type text NOT NULL, query text NOT NULL,
    body bytea NOT NULL, stored_at timestamptz NOT NULL DEFAULT now())
"""
DELIVERED = "SELECT count(*) FROM onefile_deliveries"
RECORDS = f"SELECT count(*) FROM {TABLE}"
_STAGE = f"""CREATE TEMP TABLE IF NOT EXISTS onefile_stage (LIKE {TABLE} INCLUDING DEFAULTS)
ON COMMIT DELETE ROWS"""
_LEDGER = """
INSERT INTO onefile_deliveries (ingest_id, record_key, received_at)
SELECT ingest_id, record_key, received_at FROM onefile_stage ON CONFLICT DO NOTHING
"""
_INSERT = f"""
INSERT INTO {TABLE} ({", ".join(COLUMNS)}) SELECT {", ".join(COLUMNS)} FROM onefile_stage
ORDER BY record_key  -- one lock order for all workers, as cdrflow's upsert: no deadlocks
ON CONFLICT DO NOTHING RETURNING record_key, stored_at
"""


class Coalescer:
    def __init__(self, channel: AbstractChannel, settings: Settings) -> None:
        self.channel = channel
        self.queue = settings.raw_queue
        self.linger = settings.coalesce_linger_ms / 1000
        self.max_envelopes = settings.coalesce_max_envelopes
        self.parts: list[bytes] = []
        self.waiters: list[asyncio.Future[None]] = []
        self.sending: set[asyncio.Task[None]] = set()

    def join(self, envelope: bytes) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        if not self.parts:
            loop.call_later(self.linger, self.ship, self.waiters)
        self.parts.append(envelope)
        waiter: asyncio.Future[None] = loop.create_future()
        self.waiters.append(waiter)
        if len(self.parts) >= self.max_envelopes:
            self.ship(self.waiters)
        return waiter

    def ship(self, waiters: list[asyncio.Future[None]]) -> None:
        if waiters is not self.waiters:
            return  # shipped already, when it filled up
        parts, self.parts, self.waiters = self.parts, [], []
        task = asyncio.create_task(self.send(parts, waiters))
        self.sending.add(task)
        task.add_done_callback(self.sending.discard)

    async def send(self, parts: list[bytes], waiters: list[asyncio.Future[None]]) -> None:
        try:
            await self.channel.default_exchange.publish(
                raw_message(parts), self.queue, mandatory=True, timeout=10
            )
        except Exception as exc:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(exc)
            return
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


COALESCER = web.AppKey("coalescer", Coalescer)


async def callback(request: web.Request) -> web.Response:
    body = await request.read()
    envelope = orjson.dumps(
        {
            "ingest_id": str(uuid.uuid4()),
            "source": request.match_info["source"],
            "received_at": datetime.now(UTC).isoformat(),
            "content_type": request.headers.get("Content-Type", ""),
            "query": request.rel_url.raw_query_string,
            "body": base64.b64encode(body).decode(),
        }
    )
    await request.app[COALESCER].join(envelope)
    return web.Response(text="success")


async def ready(request: web.Request) -> web.Response:
    return web.Response(text="ready")


def ingress(port: int, settings: Settings) -> None:
    async def broker(app: web.Application) -> AsyncIterator[None]:
        connection = await aio_pika.connect(settings.amqp_url)
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        app[COALESCER] = Coalescer(channel, settings)
        yield
        await connection.close()

    tune_gc()
    app = web.Application()
    app.cleanup_ctx.append(broker)
    app.router.add_get("/readyz", ready)
    app.router.add_route("*", "/v1/callbacks/{source}/{token}", callback)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


async def worker(settings: Settings) -> None:
    tune_gc()
    connection = await aio_pika.connect(settings.amqp_url)
    channel = await connection.channel(publisher_confirms=True)
    await channel.set_qos(prefetch_count=settings.batch_size)
    underlay = await channel.get_underlay_channel()
    assert isinstance(underlay, aiormq.Channel)
    database = await asyncpg.connect(settings.database_url)
    await database.execute(_STAGE)
    inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
    queue = await channel.get_queue(settings.raw_queue)
    await queue.consume(inbox.put_nowait)  # type: ignore[arg-type]
    publishing: asyncio.Task[None] | None = None
    while True:
        batch = await _take(inbox, settings.batch_size, settings.batch_wait_ms / 1000)
        rows = [_row(envelope) for m in batch for envelope in orjson.loads(m.body)["envelopes"]]
        async with database.transaction():
            await database.copy_records_to_table("onefile_stage", records=rows, columns=COLUMNS)
            await database.execute(_LEDGER)
            stored = {row["record_key"]: row["stored_at"] for row in await database.fetch(_INSERT)}
        records = [_record(row, stored[row[0]]) for row in rows if row[0] in stored]
        if publishing is not None:
            await publishing
        # Published and acked while the next batch is stored, as cdrflow publishes.
        publishing = asyncio.create_task(
            _publish_then_ack(underlay, settings.records_exchange, records, batch)
        )


async def _take(
    inbox: asyncio.Queue[AbstractIncomingMessage], size: int, wait: float
) -> list[AbstractIncomingMessage]:
    """Messages until they hold `size` callbacks, or `wait` seconds after the first."""
    batch = [await inbox.get()]
    callbacks = envelope_count(batch[0])
    deadline = time.monotonic() + wait
    while callbacks < size:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:  # an asyncio.Queue, not aio-pika's iterator: a timeout leaves it usable
            message = await asyncio.wait_for(inbox.get(), remaining)
        except TimeoutError:
            break
        batch.append(message)
        callbacks += envelope_count(message)
    return batch


def _row(envelope: dict[str, str]) -> tuple[Any, ...]:
    body = base64.b64decode(envelope["body"])
    source = envelope["source"]
    key = uuid.UUID(bytes=hashlib.md5(source.encode() + b"\n" + body).digest())  # noqa: S324
    received_at = datetime.fromisoformat(envelope["received_at"])
    ingest_id = uuid.UUID(envelope["ingest_id"])
    return (key, ingest_id, source, received_at, envelope["content_type"], envelope["query"], body)


def _record(row: tuple[Any, ...], stored_at: datetime) -> Outgoing:
    """One record message: the callback's fields and when it was stored (about 900 B)."""
    key, ingest_id, source, received_at, content_type, query, body = row
    record_id = str(key)
    document = {
        "record_id": record_id,
        "ingest_id": str(ingest_id),
        "source": source,
        "received_at": received_at,
        "stored_at": stored_at,
        "content_type": content_type,
        "query": query,
        "body": base64.b64encode(body).decode(),
    }
    return Outgoing(
        routing_key=f"default.{source}.report.completed",
        body=orjson.dumps(document),
        message_id=f"{record_id}:1",
        content_type="application/json",
        headers={"schema_version": 1, "record_id": record_id, "revision": 1},
        timestamp=int(time.time()),
    )


async def _publish_then_ack(
    channel: aiormq.Channel,
    exchange: str,
    records: list[Outgoing],
    batch: list[AbstractIncomingMessage],
) -> None:
    outcomes = await publish_batch(channel, exchange, records, mandatory=False, timeout=30)
    failed = [outcome for outcome in outcomes if outcome is not None]
    if failed:
        raise RuntimeError(f"records not confirmed: {failed[0]!r}")
    await batch[-1].ack(multiple=True)


def main(argv: list[str]) -> None:
    settings = Settings.from_env()
    if argv[0] == "ingress":
        ingress(int(argv[1]), settings)
    else:
        asyncio.run(worker(settings))


if __name__ == "__main__":
    main(sys.argv[1:])
