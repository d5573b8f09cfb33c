"""The frames `cdrflow.batchpublish` encodes itself are the bytes pamqp would write for the
message `workers.outbox.record_message` describes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import cast

import pytest
from aiormq.abc import ChannelFrame
from pamqp import commands as spec
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from cdrflow.aiormq_channel import PublishingChannel
from cdrflow.batchpublish import Outgoing, _frames
from workers.batch import OutboxEntry
from workers.outbox import record_message
from workers.records_publisher import record_outgoing

STAMP = datetime(2026, 5, 4, 3, 2, 1, tzinfo=UTC)


def fake_channel(max_content_size: int = 131_064) -> PublishingChannel:
    return cast(PublishingChannel, SimpleNamespace(number=7, max_content_size=max_content_size))


def pamqp_bytes(entry: OutboxEntry, *, mandatory: bool, chunk: int) -> bytes:
    properties = record_message(entry).properties
    properties.timestamp = STAMP
    body = entry.body
    frames: list[spec.Basic.Publish | ContentHeader | ContentBody] = [
        spec.Basic.Publish(
            exchange="cdr.records", routing_key=entry.routing_key, mandatory=mandatory
        ),
        ContentHeader(properties=properties, body_size=len(body)),
        *(ContentBody(body[i : i + chunk]) for i in range(0, len(body), chunk)),
    ]
    return ChannelFrame.marshall(channel_number=7, frames=frames).payload


@pytest.mark.parametrize("revision", [1, 300, 70_000, 2**31])
@pytest.mark.parametrize("mandatory", [False, True])
def test_record_frames_are_pamqps(revision: int, mandatory: bool) -> None:
    entry = OutboxEntry(1, uuid.uuid4(), revision, "acme.twilio.completed.answered", b'{"a":1}')
    outgoing = record_outgoing(entry, int(STAMP.timestamp()))
    encoded = _frames(fake_channel(), "cdr.records", outgoing, mandatory=mandatory)
    assert encoded == pamqp_bytes(entry, mandatory=mandatory, chunk=131_064)


def test_a_long_body_is_split_like_pamqp_splits_it() -> None:
    entry = OutboxEntry(1, uuid.uuid4(), 1, "a.b.c.d", bytes(range(256)) * 10)
    outgoing = record_outgoing(entry, int(STAMP.timestamp()))
    encoded = _frames(fake_channel(1000), "cdr.records", outgoing, mandatory=False)
    assert encoded == pamqp_bytes(entry, mandatory=False, chunk=1000)


def test_an_overlong_routing_key_is_refused_before_anything_is_sent() -> None:
    outgoing = Outgoing("k" * 256, b"", "id", "application/json", {}, 0)
    with pytest.raises(ValueError, match="longer than 255 bytes"):
        _frames(fake_channel(), "cdr.records", outgoing, mandatory=False)
