"""What the pipeline measurements share: the topology with a downstream quorum queue bound
to the records exchange, a backlog put straight on the raw queue, and waiting until the
database holds every callback (as a delivery or a rejection) and every record is on the
downstream queue."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import aio_pika
import aiormq
import asyncpg
from aio_pika.abc import AbstractChannel

from cdrflow.amqp import declare, raw_message
from cdrflow.batchpublish import Outgoing, publish_batch
from cdrflow.settings import Settings
from tools.bench.mix import Callback

ENVELOPES_PER_MESSAGE = 32  # about what the ingress coalesces under load
FILL_WINDOW = 2000  # messages written at once, then their confirms awaited
FILL_CONFIRM_TIMEOUT = 120.0


@dataclass
class Broker:
    channel: AbstractChannel
    settings: Settings

    @property
    def downstream(self) -> str:
        return f"{self.settings.records_exchange}.downstream"

    async def consumers(self) -> int:
        declared = await self.channel.declare_queue(self.settings.raw_queue, passive=True)
        return int(declared.declaration_result.consumer_count or 0)

    async def until_consumed_by(self, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while await self.consumers() < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"fewer than {count} workers consume {self.settings.raw_queue}")
            await asyncio.sleep(0.05)

    async def depth(self, queue: str) -> int:
        declared = await self.channel.declare_queue(queue, passive=True)
        count = declared.declaration_result.message_count
        return int(count or 0)


@contextlib.asynccontextmanager
async def topology(settings: Settings) -> AsyncIterator[Broker]:
    """The topology, a downstream quorum queue bound to every record; all deleted after."""
    connection = await aio_pika.connect(settings.amqp_url)
    try:
        channel = await connection.channel()
        exchanges = await declare(channel, settings.topology())
        broker = Broker(channel, settings)
        queue = await channel.declare_queue(
            broker.downstream, durable=True, arguments={"x-queue-type": "quorum"}
        )
        await queue.bind(exchanges[settings.records_exchange], routing_key="#")
        try:
            yield broker
        finally:
            names = settings.topology()
            for name in (
                names.raw_queue.name,
                names.dead_queue.name,
                broker.downstream,
                names.records_stream.name,
            ):
                await channel.queue_delete(name)
            for name in (settings.records_exchange, settings.dead_exchange):
                await channel.exchange_delete(name)
    finally:
        await connection.close()


async def fill(
    broker: Broker, backlog: Iterable[Callback], per_message: int = ENVELOPES_PER_MESSAGE
) -> int:
    """Put the callbacks on the raw queue as the ingress would have (persistent, mandatory,
    confirmed); returns how many. Messages go out in confirmed windows written at once
    (`cdrflow.batchpublish`): a 1,000,000-message backlog takes minutes, not an hour. Each
    window is encoded just before it is sent: encoding the whole backlog first kept the
    event loop from the connection's heartbeats for minutes, and the broker closed it."""
    now = datetime.now(UTC)
    underlay = await broker.channel.get_underlay_channel()
    assert isinstance(underlay, aiormq.Channel)
    envelopes = (callback.envelope(now).encode() for callback in backlog)
    total = 0
    while True:
        window, count = _window(envelopes, per_message, broker)
        if not window:
            return total
        failures = [
            outcome
            for outcome in await publish_batch(
                underlay, "", window, mandatory=True, timeout=FILL_CONFIRM_TIMEOUT
            )
            if outcome is not None
        ]
        if failures:
            raise RuntimeError(f"the backlog was not confirmed: {failures[0]!r}")
        total += count


def _window(
    envelopes: Iterator[bytes], per_message: int, broker: Broker
) -> tuple[list[Outgoing], int]:
    """The next FILL_WINDOW messages of `per_message` envelopes (fewer at the end), and how
    many envelopes they hold."""
    window, count = [], 0
    for _ in range(FILL_WINDOW):
        chunk = list(itertools.islice(envelopes, per_message))
        if not chunk:
            break
        window.append(_outgoing(raw_message(chunk), broker))
        count += len(chunk)
    return window, count


def _outgoing(message: aio_pika.Message, broker: Broker) -> Outgoing:
    headers = {k: v for k, v in (message.headers or {}).items() if isinstance(v, str | int)}
    return Outgoing(
        routing_key=broker.settings.raw_queue,
        body=message.body,
        message_id=str(message.message_id),
        content_type=str(message.content_type),
        headers=headers,
        timestamp=int(time.time()),
    )


async def stored(db: asyncpg.Connection) -> int:
    """Callbacks the workers are done with: each is a delivery or a rejection."""
    value = await db.fetchval(
        "SELECT (SELECT count(*) FROM deliveries) + (SELECT count(*) FROM rejected_callbacks)"
    )
    return int(value)


@dataclass(frozen=True)
class Drained:
    callbacks: int
    records: int  # published: new records and new revisions
    finished: float  # time.monotonic() when the last one was seen


async def until_drained(
    broker: Broker,
    db: asyncpg.Connection,
    *,
    at_least: int,
    quiet_seconds: float = 3.0,
    timeout: float = 900,
) -> Drained:
    """Wait until `at_least` callbacks are stored (or, short of that, nothing moved for
    `quiet_seconds` with the raw queue empty), the outbox is empty and every record is on
    the downstream queue.

    The checks of the outbox and of what was published read whole tables, and
    `sum(revision)` reads every wide row of `call_records`: run every 0.1 s through a
    drain, they took a fifth of PostgreSQL's time per callback, in the CPU the bench
    measures. So they run only once the cheap count says the end is near."""
    deadline = time.monotonic() + timeout
    last_change, last = time.monotonic(), (-1, -1)
    while time.monotonic() < deadline:
        done = await stored(db)
        downstream = await broker.depth(broker.downstream)
        now = time.monotonic()
        if (done, downstream) != last:
            last, last_change = (done, downstream), now
        quiet = now - last_change > quiet_seconds
        if (done >= at_least or quiet) and await _settled(db, downstream, quiet):
            if done >= at_least:
                return Drained(done, downstream, now)
            if await broker.depth(broker.settings.raw_queue) == 0:  # short, and quiet
                return Drained(done, downstream, last_change)
        await asyncio.sleep(0.1)
    raise TimeoutError(f"not drained in {timeout} s: {last}")


async def _settled(db: asyncpg.Connection, downstream: int, quiet: bool) -> bool:
    """The outbox is empty, and the downstream queue holds every record published (or
    nothing moved for the quiet period, when it is not read at all)."""
    if await db.fetchval("SELECT count(*) FROM outbox"):
        return False
    if quiet:
        return True
    # sum(revision) is what was published, unless a content came back (then less)
    published = int(await db.fetchval("SELECT coalesce(sum(revision), 0) FROM call_records"))
    return downstream >= published
