"""Publishing many messages in one write on an aiormq channel, each confirmed by the broker.

aio-pika publishes one message per call (a Message object, a task, a lock round and a write
each), which made publishing one of a worker's largest costs per record (docs/benchmarks.md,
"Private library internals"). Here a batch takes the channel's lock once, takes one delivery
tag per message as aiormq's `Channel.basic_publish` does, and writes every frame at once.
Where aiormq keeps a future per tag, the batch keeps a small `_Confirmation` that records
the outcome by tag, and one future for the whole batch, so aiormq's frame reader settles
them (a `multiple` ack settles many; a nack fails its message; a basic.return fails a
mandatory message, matched by message_id) without a future per message. What this needs of
aiormq's channel state is in `cdrflow.aiormq_channel`, and nowhere else;
tests/integration/test_batchpublish.py checks confirms, returns, nacks and timeouts against
a real broker."""

from __future__ import annotations

import asyncio
import functools
import struct
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import aiormq
from pamqp import encode

from cdrflow.aiormq_channel import PublishingChannel

MAX_SHORT_STRING = 255  # bytes: routing keys, message ids, header names


class Outgoing(NamedTuple):
    """A persistent message. `message_id` is required: a basic.return is matched by it.
    (A named tuple: made once per record, it costs half a frozen dataclass.)"""

    routing_key: str
    body: bytes
    message_id: str
    content_type: str
    headers: Mapping[str, str | int]
    timestamp: int  # seconds since the epoch
    message_type: str = ""  # the AMQP `type` property, sent when set


async def publish_batch(
    channel: aiormq.Channel,
    exchange: str,
    messages: Sequence[Outgoing],
    *,
    mandatory: bool,
    timeout: float,
) -> list[BaseException | None]:
    """Publish `messages` and wait up to `timeout` seconds for their confirms. Returns, per
    message, None when the broker confirmed it, else why not (nack, return, timeout, a
    closed channel): the caller decides what an unconfirmed message means.

    At most two windows of `WINDOW` messages await confirms at a time: aiormq walks every
    pending confirmation on each ack frame the broker sends, so its cost grows with the
    square of what is in flight (docs/benchmarks.md, "Smaller choices")."""
    publishing = PublishingChannel(channel)
    if not messages:
        return []
    deadline = asyncio.get_running_loop().time() + timeout
    sent: list[_Batch] = []
    unsent: BaseException | None = None  # why the messages not sent were not
    try:
        for start in range(0, len(messages), WINDOW):
            if len(sent) >= 2 and not await _settled_by(sent[-2], deadline):
                unsent = _unconfirmed(sent[-2].settled)  # slow or gone: send no more
                break
            window = messages[start : start + WINDOW]
            try:
                sent.append(await _send(publishing, exchange, window, mandatory=mandatory))
            except Exception as exc:
                if not sent:
                    raise  # nothing was sent, as with a batch of one window
                unsent = exc
                break
        for batch in sent[-2:]:
            await _settled_by(batch, deadline)
    finally:
        for batch in sent:
            batch.close()  # also when cancelled: a late confirm then finds its message settled
    outcomes = [outcome for batch in sent for outcome in batch.outcomes]
    return outcomes + [unsent] * (len(messages) - len(outcomes))


WINDOW = 1000  # messages; see publish_batch


async def _settled_by(batch: _Batch, deadline: float) -> bool:
    """Wait until every message of `batch` is settled, or the deadline. True when they all
    are and the channel did not close meanwhile."""
    settled = batch.settled
    remaining = deadline - asyncio.get_running_loop().time()
    if not settled.done() and remaining > 0:
        await asyncio.wait((settled,), timeout=remaining)
    return settled.done() and not settled.cancelled() and settled.exception() is None


async def _send(
    channel: PublishingChannel, exchange: str, messages: Sequence[Outgoing], *, mandatory: bool
) -> _Batch:
    async with channel.lock():
        batch = _Batch(channel, messages, mandatory=mandatory)
        try:
            frames = b"".join(_frames(channel, exchange, m, mandatory=mandatory) for m in messages)
            batch.register()
            await channel.write(frames)
        except BaseException:
            batch.withdraw()  # the broker has seen none of it
            raise
    return batch


class _Batch:
    """The confirms of one batch, kept by delivery tag, with one future for the whole batch:
    a future per message (each in two aiormq future stores, with five done callbacks) cost
    about as much as the rest of a record's publishing. `settled` is the channel's own
    future, so aiormq rejects it when the channel closes, as it would each message's."""

    def __init__(
        self, channel: PublishingChannel, messages: Sequence[Outgoing], *, mandatory: bool
    ) -> None:
        self.channel = channel
        self.messages = messages
        self.mandatory = mandatory
        self.first_tag = channel.next_tag()
        self.outcomes: list[BaseException | None] = [_UNSETTLED] * len(messages)
        self.pending = len(messages)
        self.settled: asyncio.Future[None] = channel.create_future()

    def register(self) -> None:
        """Take the next delivery tags, each with a `_Confirmation` that aiormq's frame
        reader settles."""
        for index, message in enumerate(self.messages):
            if not message.message_id:
                raise ValueError("a message published in a batch needs a message_id")
            # aiormq matches a basic.return to its publish by message_id
            returned_as = message.message_id if self.mandatory else None
            self.channel.expect_confirm(_Confirmation(self, index), returned_as)

    def settle(self, index: int, outcome: BaseException | None) -> None:
        if self.outcomes[index] is not _UNSETTLED:
            return
        self.outcomes[index] = outcome
        if self.mandatory:
            self._forget_message_id(index)
        self.pending -= 1
        if not self.pending and not self.settled.done():
            self.settled.set_result(None)

    def close(self) -> None:
        """Settle the messages still waiting: with the channel's error when it closed, else
        as timed out (aiormq then ignores their confirms, as a cancelled future's)."""
        if self.pending:
            reason = _unconfirmed(self.settled)
            for index in range(len(self.messages)):
                self.settle(index, reason)
        if not self.settled.done():
            self.settled.cancel()

    def withdraw(self) -> None:
        """Give the delivery tags back, as aiormq does when a publish is not sent."""
        self.channel.withdraw(self.first_tag)
        self.close()

    def _forget_message_id(self, index: int) -> None:
        self.channel.forget_message_id(self.messages[index].message_id, self.first_tag + index)


class _Confirmation:
    """What aiormq's frame reader settles for one message, in place of a future
    (`cdrflow.aiormq_channel.Settled`): an ack calls `set_result`, a nack or a return (the
    channel raises on returns) `set_exception`, and a confirm that comes after `done()` is
    ignored."""

    __slots__ = ("batch", "index")

    def __init__(self, batch: _Batch, index: int) -> None:
        self.batch = batch
        self.index = index

    def done(self) -> bool:
        return self.batch.outcomes[self.index] is not _UNSETTLED

    def cancelled(self) -> bool:
        return self.done()  # asked once done only: aiormq then logs the late confirm quietly

    def set_result(self, _: object) -> None:
        self.batch.settle(self.index, None)

    def set_exception(self, exception: BaseException) -> None:
        self.batch.settle(self.index, exception)


# The outcome of a message not settled yet: an object no broker outcome is.
_UNSETTLED = Exception("not settled yet")


def _unconfirmed(settled: asyncio.Future[None]) -> BaseException:
    """Why the messages still waiting when the batch stops waiting are not confirmed."""
    if not settled.done():
        return TimeoutError("no publisher confirm in time")
    if settled.cancelled():
        return aiormq.exceptions.ChannelInvalidStateError("publish cancelled (channel closed?)")
    return settled.exception() or aiormq.exceptions.ChannelInvalidStateError("channel closed")


def _frames(
    channel: PublishingChannel, exchange: str, message: Outgoing, *, mandatory: bool
) -> bytes:
    """The method, header and body frames of one publish, encoded here: pamqp's generic
    encoder costs several times as much (docs/benchmarks.md, "Smaller choices").
    tests/unit/test_batchpublish.py checks that the bytes are pamqp's."""
    number, body = channel.number, message.body
    publish = b"".join(
        (_PUBLISH_HEAD, _name(exchange), _name(message.routing_key), _MANDATORY[mandatory])
    )
    header = b"".join(
        (
            _HEADER_HEAD,
            _U64.pack(len(body)),
            _TYPED_PROPERTY_FLAGS if message.message_type else _PROPERTY_FLAGS,
            _name(message.content_type),
            _table(message.headers),
            _PERSISTENT_PRIORITY_0,
            _short(message.message_id),
            _U64.pack(message.timestamp),
            _name(message.message_type) if message.message_type else b"",
        )
    )
    parts = [
        *(_FRAME_HEAD.pack(_METHOD, number, len(publish)), publish, _FRAME_END),
        *(_FRAME_HEAD.pack(_HEADER, number, len(header)), header, _FRAME_END),
    ]
    size = channel.max_content_size
    for start in range(0, len(body), size):
        chunk = body[start : start + size]  # the body itself when it fits one frame
        parts += (_FRAME_HEAD.pack(_BODY, number, len(chunk)), chunk, _FRAME_END)
    return b"".join(parts)


def _short(text: str) -> bytes:
    encoded = text.encode()
    if len(encoded) > MAX_SHORT_STRING:
        raise ValueError(f"longer than {MAX_SHORT_STRING} bytes: {text[:40]}...")
    return bytes((len(encoded),)) + encoded


# Exchanges, routing keys, content types and header names repeat from message to message
# (a worker's routing keys are tenant.provider.event.status): encoded once.
_name = functools.lru_cache(maxsize=1024)(_short)


def _table(fields: Mapping[str, str | int]) -> bytes:
    # sorted by name, as pamqp writes a table
    encoded = b"".join([_name(key) + _field_value(fields[key]) for key in sorted(fields)])
    return _U32.pack(len(encoded)) + encoded


def _field_value(value: str | int) -> bytes:
    if isinstance(value, str):
        encoded = value.encode()
        return b"S" + _U32.pack(len(encoded)) + encoded
    return _integer(value)


# Integer header values (schema version, revision) are small and repeat.
_integer = functools.lru_cache(maxsize=1024)(encode.table_integer)
_MANDATORY = (b"\x00", b"\x01")


_METHOD, _HEADER, _BODY = 1, 2, 3
_FRAME_HEAD = struct.Struct(">BHI")
_FRAME_END = b"\xce"
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_PUBLISH_HEAD = struct.pack(">HHH", 60, 40, 0)  # basic.publish, reserved ticket
_HEADER_HEAD = struct.pack(">HH", 60, 0)  # class basic, weight
# The properties aio-pika sends, in this order on the wire: content_type, headers,
# delivery_mode, priority (0), message_id, timestamp, and type when there is one.
_FLAGS = 1 << 15 | 1 << 13 | 1 << 12 | 1 << 11 | 1 << 7 | 1 << 6
_PROPERTY_FLAGS = struct.pack(">H", _FLAGS)
_TYPED_PROPERTY_FLAGS = struct.pack(">H", _FLAGS | 1 << 5)
_PERSISTENT_PRIORITY_0 = b"\x02\x00"
