"""`cdrflow dead list` and `cdrflow dead requeue`: what `cdr.dead` holds, and moving it back
to `cdr.raw`.

AMQP 0-9-1 has no way to look at a queue without taking its messages, so both take them
with basic.get and manual acknowledgement, and hold them unacknowledged while they work: a
message is never in no queue. Listing acknowledges nothing; closing the channel gives
every message back. Requeueing publishes a copy to `cdr.raw` (persistent, mandatory, with
publisher confirms) and acknowledges the parked message only once RabbitMQ confirmed the
copy. Interrupted between the two, the message is in both queues: the workers' ledger
recognises a request it already stored by its ingest id, so the second processing counts
once.

Only envelope batches are moved: a message that is not one was parked by a worker at once
(it can never be read) and would be parked again; it stays where it is.

Counting: a requeue takes at most as many messages as `cdr.dead` held when it started, so
a message that a worker parks again meanwhile is not taken a second time in one run."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from cdrflow.amqp import connect, declare
from cdrflow.logs import get_logger
from cdrflow.settings import Settings
from schemas.envelope import EnvelopeError, RawEnvelope, decode_batch, uuid7

log = get_logger("cdrflow.dead")

FIRST_BYTES = 80
GET_TIMEOUT = 10.0
# Headers RabbitMQ writes when it dead-letters or redelivers a message: a copy put back on
# `cdr.raw` starts afresh, so its next parking tells its own story.
BROKER_HEADERS = ("x-death", "x-delivery-count")
BROKER_HEADER_PREFIXES = ("x-first-death-", "x-last-death-")


@dataclass(frozen=True)
class DeadLetter:
    """One parked message, as an operator needs to see it."""

    message_id: str
    reason: str  # RabbitMQ's: rejected, delivery_limit, expired, maxlen
    queue: str  # the queue it was parked from
    parked_at: datetime | None  # its latest parking
    times_parked: int
    sources: tuple[str, ...]  # of its envelopes; empty when it is no envelope batch
    envelopes: int
    first_bytes: str  # of the first callback's body, or of the message when unreadable
    problem: str = ""  # why it is no envelope batch

    @property
    def readable(self) -> bool:
        return not self.problem

    def as_dict(self) -> dict[str, Any]:
        return {
            "message_id": self.message_id,
            "reason": self.reason,
            "queue": self.queue,
            "parked_at": self.parked_at.isoformat() if self.parked_at else None,
            "times_parked": self.times_parked,
            "sources": list(self.sources),
            "envelopes": self.envelopes,
            "first_bytes": self.first_bytes,
            "problem": self.problem,
        }


@dataclass
class RequeueReport:
    """What a requeue did: messages (and the callbacks they hold) moved back, messages left
    in `cdr.dead` because they are no envelope batch, and the error that stopped it."""

    moved: list[DeadLetter] = field(default_factory=list)
    left: list[DeadLetter] = field(default_factory=list)
    error: str = ""

    @property
    def callbacks(self) -> int:
        return sum(letter.envelopes for letter in self.moved)


def describe(message: AbstractIncomingMessage) -> DeadLetter:
    headers: Mapping[str, Any] = message.headers or {}
    deaths = headers.get("x-death") or []
    # RabbitMQ keeps one entry per queue and reason, the latest parking first.
    first: Mapping[str, Any] = deaths[0] if deaths else {}
    reason = _text(headers.get("x-first-death-reason") or first.get("reason"))
    queue = _text(headers.get("x-first-death-queue") or first.get("queue"))
    try:
        envelopes = decode_batch(message.body)
    except EnvelopeError as exc:
        return DeadLetter(
            _text(message.message_id),
            reason,
            queue,
            _time(first.get("time")),
            _times(deaths),
            (),
            0,
            printable(message.body),
            problem=str(exc),
        )
    return DeadLetter(
        _text(message.message_id),
        reason,
        queue,
        _time(first.get("time")),
        _times(deaths),
        _sources(envelopes),
        len(envelopes),
        printable(envelopes[0].body),
    )


def printable(data: bytes, limit: int = FIRST_BYTES) -> str:
    """The first bytes as one line of text: undecodable bytes and controls escaped."""
    text = data[:limit].decode("utf-8", errors="backslashreplace")
    shown = "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)
    return shown + ("…" if len(data) > limit else "")


def _sources(envelopes: list[RawEnvelope]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(envelope.source for envelope in envelopes))


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return "" if value is None else str(value)


def _time(value: Any) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _times(deaths: list[Mapping[str, Any]]) -> int:
    return sum(int(death.get("count") or 0) for death in deaths) or 1


def requeued_copy(message: AbstractIncomingMessage) -> aio_pika.Message:
    """The message as `cdr.raw` takes it: the same body and properties, persistent, without
    the broker's dead-letter headers. A message_id is required: aiormq matches a return to
    its publish by it, so without one an unroutable copy would look confirmed."""
    headers = {
        name: value
        for name, value in (message.headers or {}).items()
        if name not in BROKER_HEADERS and not name.startswith(BROKER_HEADER_PREFIXES)
    }
    return aio_pika.Message(
        message.body,
        headers=headers,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=message.message_id or str(uuid7()),
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        correlation_id=message.correlation_id,
        timestamp=message.timestamp,
        type=message.type,
        app_id=message.app_id,
    )


async def queue_depth(channel: AbstractChannel, name: str) -> int:
    declared = await channel.declare_queue(name, passive=True)
    return int(declared.declaration_result.message_count or 0)


async def _take(queue: AbstractQueue) -> AbstractIncomingMessage | None:
    return await queue.get(no_ack=False, fail=False, timeout=GET_TIMEOUT)


@dataclass(frozen=True)
class DeadListing:
    letters: list[DeadLetter]
    depth: int  # messages in `cdr.dead` when the listing started


async def list_dead(settings: Settings, limit: int) -> DeadListing:
    """The first `limit` parked messages (0: all), oldest first. Nothing is acknowledged:
    closing the channel gives each back to `cdr.dead`."""
    connection = await connect(settings.amqp_url, "cdrflow-dead")
    try:
        channel = await connection.channel()
        await declare(channel, settings.topology())
        depth = await queue_depth(channel, settings.dead_queue)
        queue = await channel.get_queue(settings.dead_queue, ensure=False)
        letters = []
        for _ in range(min(limit, depth) if limit else depth):
            message = await _take(queue)
            if message is None:
                break
            letters.append(describe(message))
        return DeadListing(letters, depth)
    finally:
        await _close(connection)


async def requeue_dead(settings: Settings, limit: int, *, dry_run: bool = False) -> RequeueReport:
    """Move up to `limit` parked messages (0: all that are there now) back to `cdr.raw`."""
    connection = await connect(settings.amqp_url, "cdrflow-dead")
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        await declare(channel, settings.topology())
        report = await move(
            channel,
            settings.dead_queue,
            settings.raw_queue,
            limit,
            dry_run=dry_run,
            confirm_timeout=settings.confirm_timeout,
        )
    finally:
        await _close(connection)
    log.info(
        "dead_requeued" if not dry_run else "dead_requeue_dry_run",
        messages=len(report.moved),
        callbacks=report.callbacks,
        left=len(report.left),
        error=report.error or None,
    )
    return report


async def move(
    channel: AbstractChannel,
    dead_queue: str,
    raw_queue: str,
    limit: int,
    *,
    dry_run: bool,
    confirm_timeout: float,
) -> RequeueReport:
    """The requeue itself, on a channel with publisher confirms. Stops at the first copy
    RabbitMQ does not confirm (returned, nacked, timed out): that message and every one not
    yet moved stay in `dead_queue` once the channel closes."""
    report = RequeueReport()
    depth = await queue_depth(channel, dead_queue)
    queue = await channel.get_queue(dead_queue, ensure=False)
    for _ in range(min(limit, depth) if limit else depth):
        message = await _take(queue)
        if message is None:
            break
        letter = describe(message)
        if not letter.readable:
            report.left.append(letter)
            continue
        if not dry_run:
            try:
                await channel.default_exchange.publish(
                    requeued_copy(message), raw_queue, mandatory=True, timeout=confirm_timeout
                )
            except Exception as exc:  # whatever it was, RabbitMQ has not confirmed the copy
                report.error = f"{raw_queue} did not confirm: {type(exc).__name__}: {exc}"
                break
            await message.ack()
        report.moved.append(letter)
    return report


async def _close(connection: Any) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(connection.close(), 5)
