"""The design limit: the same design as cdrflow in one file, with no per-callback logic
beyond what the design itself needs. Its end-to-end rate, measured next to cdrflow's in
the same run, says how much of the gap to the machine is in our code (issue 9 cites such
a pipeline: "the gap is in our code, not in the machine").

What it keeps of the design, so the broker and the database do the same kind of work:
- ingress: reads the body, wraps it in a JSON envelope (base64 body), coalesces requests
  into one persistent, mandatory, confirmed message on a quorum queue (cdrflow's defaults:
  128 envelopes or 2 ms), and answers 200 once the broker confirmed it;
- worker: takes up to 500 messages or 50 ms, COPYs the envelopes into a staging table and
  upserts them (ON CONFLICT DO NOTHING on the ingest id) in one transaction, publishes one
  persistent, mandatory, confirmed message per stored row to a topic exchange (a quorum
  queue and a stream bound, as cdrflow's records exchange has), then acks the batch.
What it leaves out is everything cdrflow does per callback: provider parsing and
normalizing, content hashes, the delivery ledger, revisions, the outbox, metrics and logs.

    python -m tests.bench.onefile ingress PORT
    python -m tests.bench.onefile worker DATABASE_URL
(with ONEFILE_AMQP_URL and ONEFILE_PREFIX in the environment)"""

from __future__ import annotations

import asyncio
import base64
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import aio_pika
import aiormq
import asyncpg
import orjson
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from aiohttp import web

from cdrflow.batchpublish import Outgoing, publish_batch

LINGER_SECONDS = 0.002
MAX_ENVELOPES = 128
BATCH = 500
BATCH_WAIT_SECONDS = 0.05
TABLE = "onefile_records"
COLUMNS = ("ingest_id", "source", "received_at", "content_type", "query", "body")
CREATE_TABLE = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    ingest_id uuid PRIMARY KEY, source text NOT NULL, received_at timestamptz NOT NULL,
    content_type text NOT NULL, query text NOT NULL, body bytea NOT NULL,
    stored_at timestamptz NOT NULL DEFAULT now())
"""
_STAGE = f"""CREATE TEMP TABLE IF NOT EXISTS onefile_stage (LIKE {TABLE} INCLUDING DEFAULTS)
ON COMMIT DELETE ROWS"""
_UPSERT = f"""
INSERT INTO {TABLE} ({", ".join(COLUMNS)}) SELECT {", ".join(COLUMNS)} FROM onefile_stage
ON CONFLICT DO NOTHING RETURNING ingest_id, stored_at
"""


class Names:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.raw = f"{prefix}.raw"
        self.records = f"{prefix}.records"
        self.downstream = f"{prefix}.downstream"
        self.stream = f"{prefix}.stream"


async def declare(channel: AbstractChannel, names: Names) -> None:
    await channel.declare_queue(names.raw, durable=True, arguments={"x-queue-type": "quorum"})
    records = await channel.declare_exchange(
        names.records, aio_pika.ExchangeType.TOPIC, durable=True
    )
    downstream = await channel.declare_queue(
        names.downstream, durable=True, arguments={"x-queue-type": "quorum"}
    )
    await downstream.bind(records, "#")
    stream = await channel.declare_queue(
        names.stream, durable=True, arguments={"x-queue-type": "stream", "x-max-age": "1D"}
    )
    await stream.bind(records, "#")


async def delete(channel: AbstractChannel, names: Names) -> None:
    for queue in (names.raw, names.downstream, names.stream):
        await channel.queue_delete(queue)
    await channel.exchange_delete(names.records)


class Coalescer:
    def __init__(self, channel: AbstractChannel, queue: str) -> None:
        self.channel = channel
        self.queue = queue
        self.parts: list[bytes] = []
        self.waiters: list[asyncio.Future[None]] = []
        self.sending: set[asyncio.Task[None]] = set()

    def join(self, envelope: bytes) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        if not self.parts:
            loop.call_later(LINGER_SECONDS, self.ship, self.waiters)
        self.parts.append(envelope)
        waiter: asyncio.Future[None] = loop.create_future()
        self.waiters.append(waiter)
        if len(self.parts) >= MAX_ENVELOPES:
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
        message = aio_pika.Message(
            b"[" + b",".join(parts) + b"]",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=uuid.uuid4().hex,
        )
        try:
            await self.channel.default_exchange.publish(
                message, self.queue, mandatory=True, timeout=10
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


def ingress(port: int, amqp_url: str, names: Names) -> None:
    async def broker(app: web.Application) -> AsyncIterator[None]:
        connection = await aio_pika.connect(amqp_url)
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        await declare(channel, names)
        app[COALESCER] = Coalescer(channel, names.raw)
        yield
        await connection.close()

    app = web.Application()
    app.cleanup_ctx.append(broker)
    app.router.add_get("/readyz", ready)
    app.router.add_route("*", "/v1/callbacks/{source}/{token}", callback)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


async def worker(database_url: str, amqp_url: str, names: Names) -> None:
    connection = await aio_pika.connect(amqp_url)
    channel = await connection.channel(publisher_confirms=True)
    await channel.set_qos(prefetch_count=BATCH)
    underlay = await channel.get_underlay_channel()
    assert isinstance(underlay, aiormq.Channel)
    database = await asyncpg.connect(database_url)
    inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
    queue = await channel.get_queue(names.raw)
    await queue.consume(inbox.put_nowait)  # type: ignore[arg-type]
    while True:
        batch = await _take(inbox)
        envelopes = [e for message in batch for e in orjson.loads(message.body)]
        rows = [
            (
                uuid.UUID(e["ingest_id"]),
                e["source"],
                datetime.fromisoformat(e["received_at"]),
                e["content_type"],
                e["query"],
                base64.b64decode(e["body"]),
            )
            for e in envelopes
        ]
        async with database.transaction():
            await database.execute(_STAGE)
            await database.copy_records_to_table("onefile_stage", records=rows, columns=COLUMNS)
            stored = {row["ingest_id"]: row["stored_at"] for row in await database.fetch(_UPSERT)}
        records = [_record(e, stored) for e in envelopes if uuid.UUID(e["ingest_id"]) in stored]
        outcomes = await publish_batch(underlay, names.records, records, mandatory=True, timeout=30)
        failed = [outcome for outcome in outcomes if outcome is not None]
        if failed:
            raise RuntimeError(f"records not confirmed: {failed[0]!r}")
        await batch[-1].ack(multiple=True)


async def _take(inbox: asyncio.Queue[AbstractIncomingMessage]) -> list[AbstractIncomingMessage]:
    batch = [await inbox.get()]
    deadline = time.monotonic() + BATCH_WAIT_SECONDS
    while len(batch) < BATCH:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:  # an asyncio.Queue, not aio-pika's iterator: a timeout leaves it usable
            batch.append(await asyncio.wait_for(inbox.get(), remaining))
        except TimeoutError:
            break
    return batch


def _record(envelope: dict[str, str], stored: dict[uuid.UUID, datetime]) -> Outgoing:
    """One record message: the envelope's fields and when it was stored (about 900 B)."""
    ingest_id = envelope["ingest_id"]
    body = orjson.dumps({**envelope, "stored_at": stored[uuid.UUID(ingest_id)]})
    return Outgoing(
        routing_key=f"default.{envelope['source']}.report",
        body=body,
        message_id=ingest_id,
        content_type="application/json",
        headers={"schema": 1},
        timestamp=int(time.time()),
    )


def main(argv: list[str]) -> None:
    amqp_url, names = os.environ["ONEFILE_AMQP_URL"], Names(os.environ["ONEFILE_PREFIX"])
    if argv[0] == "ingress":
        ingress(int(argv[1]), amqp_url, names)
    else:
        asyncio.run(worker(argv[1], amqp_url, names))


if __name__ == "__main__":
    main(sys.argv[1:])
