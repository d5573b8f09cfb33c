"""Reading what the code under test left on RabbitMQ."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from cdrflow.settings import Settings
from schemas.envelope import RawEnvelope, decode_batch
from schemas.jsoncodec import loads
from tests.support.samples import record_validator
from tests.support.waiting import eventually


async def take_messages(
    channel: AbstractChannel, queue: str, *, envelopes: int, timeout: float = 10.0
) -> list[AbstractIncomingMessage]:
    """Get (and ack) raw messages until they hold `envelopes` envelopes, or time runs out."""
    found: list[AbstractIncomingMessage] = []
    count = 0
    target = await channel.get_queue(queue, ensure=False)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while count < envelopes and loop.time() < deadline:
        message = await target.get(fail=False, timeout=5)
        if message is None:
            await asyncio.sleep(0.02)
            continue
        await message.ack()
        found.append(message)
        count += len(decode_batch(message.body))
    return found


async def take_envelopes(
    channel: AbstractChannel, queue: str, *, count: int, timeout: float = 10.0
) -> list[RawEnvelope]:
    messages = await take_messages(channel, queue, envelopes=count, timeout=timeout)
    return [e for m in messages for e in decode_batch(m.body)]


async def queue_depth(channel: AbstractChannel, queue: str) -> int:
    declared = await channel.declare_queue(queue, passive=True)
    count = declared.declaration_result.message_count
    return int(count or 0)


async def depth_becomes(channel: AbstractChannel, queue: str, count: int) -> bool:
    """Whether the queue comes to hold `count` ready messages. Messages a closed channel held
    unacknowledged go back to their queue a moment after the close returns."""

    async def reached() -> bool:
        return await queue_depth(channel, queue) == count

    return await eventually(reached)


class RecordTap:
    """Every message published on the records exchange while the tap is open. Each one is
    checked against schemas/call_record.schema.json on arrival; the tap fails the test on
    close if any did not validate."""

    def __init__(self) -> None:
        self.messages: list[AbstractIncomingMessage] = []
        self.invalid: list[str] = []

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return [loads(m.body) for m in self.messages]

    def of(self, record_id: str) -> list[AbstractIncomingMessage]:
        return [m for m in self.messages if loads(m.body)["record_id"] == record_id]

    async def wait_for(self, count: int, timeout: float = 15.0) -> None:
        """Until `count` messages came, or time ran out: the caller asserts on what came."""

        async def enough() -> bool:
            return len(self.messages) >= count

        await eventually(enough, timeout)


@asynccontextmanager
async def record_tap(
    channel: AbstractChannel, settings: Settings, binding: str = "#"
) -> AsyncIterator[RecordTap]:
    tap = RecordTap()
    exchange = await channel.declare_exchange(
        settings.records_exchange, aio_pika.ExchangeType.TOPIC, durable=True
    )
    queue = await channel.declare_queue("", exclusive=True, auto_delete=True)
    await queue.bind(exchange, routing_key=binding)

    async def collect(message: AbstractIncomingMessage) -> None:
        errors = [e.message for e in record_validator().iter_errors(loads(message.body))]
        if errors:
            tap.invalid.append(f"{message.message_id}: {errors}")
        tap.messages.append(message)
        await message.ack()

    tag = await queue.consume(collect)
    try:
        yield tap
    finally:
        await queue.cancel(tag)
    assert not tap.invalid, f"published records that break the JSON Schema: {tap.invalid}"
