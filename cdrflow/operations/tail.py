"""`cdrflow tail [BINDING] [--since T | --from first | --offset N] [--show-offset]`: print
records, one JSON object a line.

Without a starting point it binds a temporary queue to `cdr.records` and prints records as
they arrive. With one, it reads the records stream (a RabbitMQ stream queue that keeps
every published record for its retention) from that point on, then keeps following it.
BINDING is a topic pattern over `{tenant}.{provider}.{event}.{status}`, e.g. `acme.nxcloud.#`
or `*.*.*.failed`: the broker applies it to the temporary queue, tail applies it itself to
the stream, which holds every record. With `show_offset`, each line is
`{"offset": N, "record": {...}}`: N is where that record sits in the stream, the point a later
`--offset N` starts from."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TextIO

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from cdrflow.amqp import connect, declare
from cdrflow.settings import Settings

# Stream consumers must set a prefetch; acks grant the broker credit to send more.
STREAM_PREFETCH = 500
STREAM_ORIGINS = ("first", "last", "next")

Wanted = Callable[[AbstractIncomingMessage], bool]


class TailError(Exception):
    """Tail cannot go on (the broker connection was lost)."""


@dataclass(frozen=True, slots=True)
class StreamStart:
    """Where to start reading the records stream: `first`, `last` or `next`, an offset, or
    the records published at or after a time."""

    origin: str | int | datetime

    @property
    def consume_arguments(self) -> dict[str, Any]:
        return {"x-stream-offset": self.origin}

    def wants(self, message: AbstractIncomingMessage) -> bool:
        # The broker starts at the chunk holding the time, so the first messages it sends
        # may be older; AMQP timestamps are whole seconds.
        if not isinstance(self.origin, datetime) or message.timestamp is None:
            return True
        return message.timestamp >= self.origin.replace(microsecond=0)


class TopicPattern:
    """AMQP topic matching: words separated by dots, `*` is one word, `#` zero or more."""

    def __init__(self, pattern: str) -> None:
        self.words = tuple(pattern.split("."))

    def matches(self, routing_key: str) -> bool:
        return _match(self.words, tuple(routing_key.split(".")))


def _match(pattern: tuple[str, ...], key: tuple[str, ...]) -> bool:
    if not pattern:
        return not key
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_match(rest, key[skip:]) for skip in range(len(key) + 1))
    return bool(key) and head in ("*", key[0]) and _match(rest, key[1:])


async def tail(
    settings: Settings,
    binding: str,
    out: TextIO,
    stopping: asyncio.Event,
    count: int | None = None,
    ready: asyncio.Event | None = None,
    start: StreamStart | None = None,
    show_offset: bool = False,
) -> int:
    """Print records until `stopping` is set or `count` records were printed. Returns how
    many were printed. An idle exchange is no reason to stop: tail waits. Offsets are the
    stream's, so `show_offset` reads the stream (from `next` unless told otherwise)."""
    if show_offset and start is None:
        start = StreamStart("next")
    connection = await connect(settings.amqp_url, "cdrflow-tail")
    try:
        channel = await connection.channel()
        lost = asyncio.Event()
        channel.close_callbacks.add(lambda *_: lost.set())
        inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        if start is None:
            queue = await _live_queue(channel, settings, binding)
            await queue.consume(inbox.put)
        else:
            queue = await _stream_queue(channel, settings)
            await queue.consume(inbox.put, arguments=start.consume_arguments)
        if ready is not None:
            ready.set()
        line = _with_offset if show_offset else _record_only
        until = _Until(stopping, lost)
        return await _print(inbox, out, until, count, _filter(binding, start), line)
    finally:
        await connection.close()


async def _live_queue(channel: AbstractChannel, settings: Settings, binding: str) -> AbstractQueue:
    exchanges = await declare(channel, settings.topology())
    queue = await channel.declare_queue("", exclusive=True, auto_delete=True)
    await queue.bind(exchanges[settings.records_exchange], routing_key=binding)
    return queue


async def _stream_queue(channel: AbstractChannel, settings: Settings) -> AbstractQueue:
    topology = settings.topology()
    await declare(channel, topology)
    await channel.set_qos(prefetch_count=STREAM_PREFETCH)
    return await channel.get_queue(topology.records_stream.name, ensure=False)


def _filter(binding: str, start: StreamStart | None) -> Wanted:
    if start is None:
        return lambda _message: True  # the broker filtered by the binding
    pattern = TopicPattern(binding)
    return lambda message: pattern.matches(message.routing_key or "") and start.wants(message)


def _record_only(message: AbstractIncomingMessage) -> str:
    return message.body.decode("utf-8")


def _with_offset(message: AbstractIncomingMessage) -> str:
    # RabbitMQ puts each stream message's offset in this header when it delivers it.
    offset = (message.headers or {}).get("x-stream-offset")
    return f'{{"offset":{int(str(offset))},"record":{message.body.decode("utf-8")}}}'


class _Until:
    """Whichever comes first: a stop request, or the loss of the channel."""

    def __init__(self, stopping: asyncio.Event, lost: asyncio.Event) -> None:
        self.stopping, self.lost = stopping, lost

    async def wait(self) -> None:
        waits = [asyncio.create_task(e.wait()) for e in (self.stopping, self.lost)]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()
        if self.lost.is_set() and not self.stopping.is_set():
            raise TailError("the connection to RabbitMQ was lost")


async def _print(
    inbox: asyncio.Queue[AbstractIncomingMessage],
    out: TextIO,
    until: _Until,
    count: int | None,
    wanted: Wanted,
    line: Callable[[AbstractIncomingMessage], str],
) -> int:
    printed = 0
    ended = asyncio.create_task(until.wait())
    try:
        while count is None or printed < count:
            arrival = asyncio.create_task(inbox.get())
            await asyncio.wait({arrival, ended}, return_when=asyncio.FIRST_COMPLETED)
            if not arrival.done():
                arrival.cancel()
                ended.result()  # raises TailError when the connection was lost
                break
            message = arrival.result()
            if wanted(message):
                out.write(line(message) + "\n")
                out.flush()
                printed += 1
            await message.ack()
    finally:
        ended.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ended
    return printed
