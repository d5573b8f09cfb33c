"""Publishing many messages in one write on an aiormq channel, each confirmed by the broker.

aio-pika publishes one message per call (a Message object, a task, a lock round and a
write each): about 135 µs of a worker's CPU per record on `cdr.records` (issue 9). Here a
batch takes the channel's lock once, registers one confirmation per delivery tag exactly
as aiormq's `Channel.basic_publish` does, so aiormq's frame reader settles them (a
`multiple` ack settles many; a nack fails its message; a basic.return fails a mandatory
message, matched by message_id), and writes every frame at once. It reaches into aiormq's
channel state, so aiormq is pinned in constraints.txt and tests/integration/test_batchpublish.py
checks confirms, returns and timeouts against a real broker."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import aiormq
from aiormq.abc import ChannelFrame
from pamqp import encode

MAX_SHORT_STRING = 255  # bytes: routing keys, message ids, header names


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A persistent message. `message_id` is required: a basic.return is matched by it."""

    routing_key: str
    body: bytes
    message_id: str
    content_type: str
    headers: Mapping[str, str | int]
    timestamp: int  # seconds since the epoch


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
    closed channel): the caller decides what an unconfirmed message means."""
    if not channel.publisher_confirms:
        raise ValueError("publish_batch needs a channel with publisher confirms")
    if not messages:
        return []
    confirmations = await _send(channel, exchange, messages, mandatory=mandatory)
    await asyncio.wait(confirmations, timeout=timeout)
    return [_outcome(confirmation) for confirmation in confirmations]


async def _send(
    channel: aiormq.Channel, exchange: str, messages: Sequence[Outgoing], *, mandatory: bool
) -> list[asyncio.Future[object]]:
    confirmations: list[asyncio.Future[object]] = []
    async with channel.lock:
        first_tag = channel.delivery_tag
        try:
            frames = b"".join(_frames(channel, exchange, m, mandatory=mandatory) for m in messages)
            confirmations += (_register(channel, message) for message in messages)
            await channel.write_queue.put(ChannelFrame(payload=frames, should_close=False))
        except BaseException:
            # The broker has seen none of it: give the delivery tags back, as aiormq does.
            _forget_all(channel, first_tag, messages, confirmations)
            raise
    return confirmations


def _register(channel: aiormq.Channel, message: Outgoing) -> asyncio.Future[object]:
    message_id = message.message_id
    if not message_id:
        raise ValueError("a message published in a batch needs a message_id")
    channel.delivery_tag += 1
    tag = channel.delivery_tag
    confirmation: asyncio.Future[object] = channel.create_future()
    channel.confirmations[tag] = confirmation
    channel.message_id_delivery_tag[message_id] = tag
    confirmation.add_done_callback(partial(_forget_message_id, channel, message_id, tag))
    return confirmation


def _frames(channel: aiormq.Channel, exchange: str, message: Outgoing, *, mandatory: bool) -> bytes:
    """The method, header and body frames of one publish, encoded here: pamqp's generic
    encoder cost about 35 µs per message. tests/unit/test_batchpublish.py checks that the
    bytes are pamqp's."""
    number = channel.number
    publish = _PUBLISH_HEAD + _short(exchange) + _short(message.routing_key) + bytes((mandatory,))
    header = b"".join(
        (
            _HEADER_HEAD,
            _U64.pack(len(message.body)),
            _PROPERTY_FLAGS,
            _short(message.content_type),
            _table(message.headers),
            _PERSISTENT_PRIORITY_0,
            _short(message.message_id),
            _U64.pack(message.timestamp),
        )
    )
    parts = [_frame(_METHOD, number, publish), _frame(_HEADER, number, header)]
    body, size = message.body, channel.max_content_size
    parts += (_frame(_BODY, number, body[i : i + size]) for i in range(0, len(body), size))
    return b"".join(parts)


def _frame(kind: int, channel_number: int, payload: bytes) -> bytes:
    return _FRAME_HEAD.pack(kind, channel_number, len(payload)) + payload + _FRAME_END


def _short(text: str) -> bytes:
    encoded = text.encode()
    if len(encoded) > MAX_SHORT_STRING:
        raise ValueError(f"longer than {MAX_SHORT_STRING} bytes: {text[:40]}...")
    return bytes((len(encoded),)) + encoded


def _table(fields: Mapping[str, str | int]) -> bytes:
    # sorted by name, as pamqp writes a table
    encoded = b"".join(_short(key) + _field_value(fields[key]) for key in sorted(fields))
    return _U32.pack(len(encoded)) + encoded


def _field_value(value: str | int) -> bytes:
    if isinstance(value, str):
        encoded = value.encode()
        return b"S" + _U32.pack(len(encoded)) + encoded
    return encode.table_integer(value)


_METHOD, _HEADER, _BODY = 1, 2, 3
_FRAME_HEAD = struct.Struct(">BHI")
_FRAME_END = b"\xce"
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_PUBLISH_HEAD = struct.pack(">HHH", 60, 40, 0)  # basic.publish, reserved ticket
_HEADER_HEAD = struct.pack(">HH", 60, 0)  # class basic, weight
# The properties aio-pika sends, in this order on the wire: content_type, headers,
# delivery_mode, priority (0), message_id, timestamp.
_PROPERTY_FLAGS = struct.pack(">H", 1 << 15 | 1 << 13 | 1 << 12 | 1 << 11 | 1 << 7 | 1 << 6)
_PERSISTENT_PRIORITY_0 = b"\x02\x00"


def _forget_message_id(
    channel: aiormq.Channel, message_id: str, tag: int, _: asyncio.Future[object]
) -> None:
    if channel.message_id_delivery_tag.get(message_id) == tag:
        del channel.message_id_delivery_tag[message_id]


def _forget_all(
    channel: aiormq.Channel,
    first_tag: int,
    messages: Sequence[Outgoing],
    confirmations: list[asyncio.Future[object]],
) -> None:
    for tag in range(first_tag + 1, channel.delivery_tag + 1):
        channel.confirmations.pop(tag, None)
    for confirmation in confirmations:
        confirmation.cancel()  # its done callback forgets the message_id
    channel.delivery_tag = first_tag


def _outcome(confirmation: asyncio.Future[object]) -> BaseException | None:
    if not confirmation.done():
        confirmation.cancel()  # aiormq ignores a late confirm of a cancelled future
        return TimeoutError("no publisher confirm in time")
    if confirmation.cancelled():
        return aiormq.exceptions.ChannelInvalidStateError("publish cancelled (channel closed?)")
    return confirmation.exception()
