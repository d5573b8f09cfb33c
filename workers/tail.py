"""`cdrflow tail [BINDING]`: subscribe to `cdr.records` and print each record as it
arrives, one JSON object a line. BINDING is a topic pattern over
`{tenant}.{provider}.{event}.{status}`, e.g. `acme.nxcloud.#` or `*.*.*.failed`."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TextIO

from cdrflow.amqp import connect, declare
from cdrflow.settings import Settings


async def tail(
    settings: Settings,
    binding: str,
    out: TextIO,
    stopping: asyncio.Event,
    count: int | None = None,
    ready: asyncio.Event | None = None,
) -> int:
    """Print records until `stopping` is set or `count` records were printed."""
    connection = await connect(settings.amqp_url, "cdrflow-tail")
    printed = 0
    try:
        channel = await connection.channel()
        exchanges = await declare(channel, settings.topology())
        queue = await channel.declare_queue("", exclusive=True, auto_delete=True)
        await queue.bind(exchanges[settings.records_exchange], routing_key=binding)
        if ready is not None:
            ready.set()
        async with queue.iterator() as messages:
            while not stopping.is_set() and (count is None or printed < count):
                with contextlib.suppress(TimeoutError):
                    message = await asyncio.wait_for(messages.__anext__(), 0.5)
                    out.write(message.body.decode("utf-8") + "\n")
                    out.flush()
                    await message.ack()
                    printed += 1
    finally:
        await connection.close()
    return printed
