"""The raw envelope wire format (schemas/raw_batch.schema.json)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from schemas.envelope import EnvelopeError, RawEnvelope, decode_batch, encode_batch, uuid7
from schemas.jsoncodec import loads
from tests.support.samples import raw_batch_validator


def make(body: bytes = b"x", **changes: object) -> RawEnvelope:
    fields: dict[str, object] = {
        "ingest_id": uuid7(),
        "source": "nx-dr",
        "tenant": "acme",
        "provider": "nxcloud.voice_dr",
        "received_at": datetime(2026, 11, 22, 10, 0, 0, 123456, tzinfo=UTC),
        "method": "GET",
        "path": "/v1/callbacks/nx-dr",
        "query": "messageid=1&result=%E6%88%90%E5%8A%9F",
        "content_type": "",
        "body": body,
        "client": "203.0.113.7",
        "headers": {"user-agent": "pusher"},
    }
    fields.update(changes)
    return RawEnvelope(**fields)  # type: ignore[arg-type]


def test_a_batch_round_trips_every_field_and_every_byte() -> None:
    envelopes = [
        make(bytes(range(256))),
        make(b"", method="POST", replay=True),
        make("成功".encode()),
    ]
    wire = encode_batch([e.encode() for e in envelopes])
    assert decode_batch(wire) == envelopes
    raw_batch_validator().validate(loads(wire))


def test_received_at_is_utc_with_microseconds_on_the_wire() -> None:
    wire = loads(encode_batch([make().encode()]))
    assert wire["envelopes"][0]["received_at"] == "2026-11-22T10:00:00.123456Z"
    assert wire["format"] == "cdrflow.raw/1"


def test_uuid7_is_time_ordered() -> None:
    first, second = uuid7(), uuid7()
    assert first.version == second.version == 7
    assert first.variant == uuid.RFC_4122
    assert first.int >> 80 <= second.int >> 80


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"not json", "not JSON"),
        (b'{"format":"other","envelopes":[]}', "not a cdrflow.raw/1 batch"),
        (b'{"format":"cdrflow.raw/1","envelopes":[]}', "no envelopes"),
        (b'{"format":"cdrflow.raw/1","envelopes":[1]}', "not an object"),
        (b'{"format":"cdrflow.raw/1","envelopes":[{"ingest_id":"nope"}]}', "bad envelope"),
    ],
)
def test_what_is_not_a_batch_says_why(body: bytes, problem: str) -> None:
    with pytest.raises(EnvelopeError, match=problem):
        decode_batch(body)


def test_bad_base64_is_refused() -> None:
    wire = make().to_wire()
    wire["body"] = "***"
    with pytest.raises(EnvelopeError):
        RawEnvelope.from_wire(wire)


def test_a_backfill_says_so_on_the_wire_and_a_push_says_nothing() -> None:
    pushed, backfilled = make(), make(origin="backfill")
    wire = loads(encode_batch([pushed.encode(), backfilled.encode()]))
    assert "origin" not in wire["envelopes"][0]
    assert wire["envelopes"][1]["origin"] == "backfill"
    raw_batch_validator().validate(wire)
    assert [
        e.origin for e in decode_batch(encode_batch([pushed.encode(), backfilled.encode()]))
    ] == [
        "push",
        "backfill",
    ]


def test_an_unknown_origin_is_refused() -> None:
    wire = make().to_wire() | {"origin": "guess"}
    with pytest.raises(EnvelopeError, match="origin"):
        RawEnvelope.from_wire(wire)
