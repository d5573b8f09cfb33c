"""The raw envelope: one provider HTTP request exactly as the ingress received it.

Wire format on `cdr.raw` (JSON Schema: `raw_batch.schema.json`). The ingress coalesces
requests that arrive together into one AMQP message, so a message body is a batch:

    {
      "format": "cdrflow.raw/1",
      "envelopes": [
        {
          "ingest_id": "01937c5e-...",          # uuid7, unique per HTTP request
          "source": "nxcloud-cc",              # source name (the URL slug)
          "tenant": "acme",
          "provider": "nxcloud.call_center_report",
          "received_at": "2026-11-22T10:00:00.123456Z",   # UTC, microseconds
          "method": "POST",
          "path": "/v1/callbacks/nxcloud-cc",  # never the token
          "query": "a=1&b=2",                  # raw query string, as received
          "content_type": "application/json;charset=UTF-8",
          "headers": {"user-agent": "..."},     # `stored_headers`: see below
          "client": "203.0.113.7",
          "body": "eyJjYWxs...",               # base64 of the body bytes, exactly as received
          "replay": false,                      # true when sent again by `cdrflow replay`
          "reading": 1,                         # only when not 0: which reading of an
                                                # ambiguous body the signature verified
          "origin": "backfill"                  # only when not "push": found in the provider's
                                                # books by `cdrflow reconcile`, never pushed
        }
      ]
    }

AMQP properties: persistent, `message_id` = batch id, `content_type` application/json,
header `cdrflow-format` = "cdrflow.raw/1", header `cdrflow-envelopes` = count.

What `headers` keeps is a choice of its own, separate from authentication: a provider's
`authenticate` is given every request header (a signature may travel in one), while an
envelope is kept for days in queues, `cdr.dead` and `rejected_callbacks`, so it stores
only the headers in `KEPT_HEADERS`, those worth having for diagnosis and replay, never a
credential (Authorization, Cookie, a signature). Adding a provider never changes that list:
once the ingress has authenticated a request, no later step needs its credentials.
"""

from __future__ import annotations

import base64
import binascii
import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from schemas.jsoncodec import dumps

FORMAT = "cdrflow.raw/1"
FORMAT_HEADER = "cdrflow-format"
COUNT_HEADER = "cdrflow-envelopes"
PUSH = "push"
BACKFILL = "backfill"
ORIGINS = (PUSH, BACKFILL)

# Headers worth keeping for diagnosis and replay. Never Authorization, Cookie or the like.
KEPT_HEADERS = frozenset(
    {
        "content-type",
        "content-length",
        "content-encoding",
        "user-agent",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-real-ip",
        "x-request-id",
    }
)


def stored_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The request headers an envelope keeps (lower-cased names); see the module doc."""
    return {k.lower(): v for k, v in headers.items() if k.lower() in KEPT_HEADERS}


class EnvelopeError(ValueError):
    """A message on the raw queue that is not a well-formed envelope batch."""


def uuid7() -> uuid.UUID:
    """Time-ordered UUID (RFC 9562 version 7): keeps B-tree inserts local."""
    millis = time.time_ns() // 1_000_000
    value = (millis & ((1 << 48) - 1)) << 80 | int.from_bytes(os.urandom(10)) & ((1 << 80) - 1)
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # variant
    return uuid.UUID(int=value)


def format_time(moment: datetime) -> str:
    """UTC with microseconds: 2026-11-22T10:00:00.123456Z."""
    utc = moment.astimezone(UTC)
    if utc.year < 1000:  # strftime writes no leading zeros there; isoformat would
        return utc.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    # isoformat costs a third of strftime, and writes the same text from year 1000 on
    return utc.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


@dataclass(frozen=True, slots=True)
class RawEnvelope:
    ingest_id: uuid.UUID
    source: str
    tenant: str
    provider: str
    received_at: datetime
    method: str
    path: str
    query: str
    content_type: str
    body: bytes
    client: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    replay: bool = False
    # Which reading of an ambiguous body (Huawei's {k=v} rendering) the signature verified
    # at the ingress; 0, the deterministic reading, when there was no choice to make.
    reading: int = 0
    # "push" (the provider pushed it) or "backfill" (`cdrflow reconcile` found it in the
    # provider's books and sent it on the same path).
    origin: str = PUSH
    # Set by `cdrflow reprocess`, in its own process, never on the wire: the request is one
    # stored before, read again with today's providers and sources file. It is no delivery
    # (nothing claimed or counted), and the revision it makes is marked reprocessed.
    reprocess: bool = False

    def to_wire(self) -> dict[str, Any]:
        wire = {
            "ingest_id": str(self.ingest_id),
            "source": self.source,
            "tenant": self.tenant,
            "provider": self.provider,
            "received_at": format_time(self.received_at),
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "content_type": self.content_type,
            "headers": dict(self.headers),
            "client": self.client,
            "body": base64.b64encode(self.body).decode("ascii"),
            "replay": self.replay,
        }
        if self.reading:
            wire["reading"] = self.reading  # absent when 0: older workers read it as before
        if self.origin != PUSH:
            wire["origin"] = self.origin  # absent for a push, the usual case
        return wire

    def encode(self) -> bytes:
        return dumps(self.to_wire())

    @classmethod
    def from_wire(cls, data: Any) -> RawEnvelope:
        if not isinstance(data, dict):
            raise EnvelopeError("envelope is not an object")
        try:
            headers = data.get("headers") or {}
            if not isinstance(headers, dict):
                raise EnvelopeError("headers is not an object")
            return cls(  # positional: a third cheaper than by keyword, per callback
                uuid.UUID(_text(data, "ingest_id")),
                _text(data, "source"),
                _text(data, "tenant"),
                _text(data, "provider"),
                _parse_time(_text(data, "received_at")),
                _text(data, "method"),
                _text(data, "path"),
                _text(data, "query", required=False),
                _text(data, "content_type", required=False),
                _body(_text(data, "body", required=False)),
                _text(data, "client", required=False),
                {str(k): str(v) for k, v in headers.items()},
                bool(data.get("replay", False)),
                _reading(data.get("reading", 0)),
                _origin(data.get("origin", PUSH)),
            )
        except (ValueError, binascii.Error) as exc:
            if isinstance(exc, EnvelopeError):
                raise
            raise EnvelopeError(f"bad envelope: {exc}") from exc


def _body(text: str) -> bytes:
    try:
        # Strict base64, as the ingress writes it: half the cost of b64decode(validate=True),
        # which accepts all that this accepts, with the same bytes.
        return binascii.a2b_base64(text, strict_mode=True)
    except ValueError:
        return base64.b64decode(text, validate=True)  # anything else is judged as before


def _reading(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1024:
        raise EnvelopeError("reading is not a small non-negative integer")
    return value


def _origin(value: Any) -> str:
    if value not in ORIGINS:
        raise EnvelopeError(f"origin is not one of {', '.join(ORIGINS)}")
    return str(value)


def _text(data: dict[str, Any], key: str, *, required: bool = True) -> str:
    value = data.get(key)
    if value is None:
        if required:
            raise EnvelopeError(f"envelope has no {key}")
        return ""
    if not isinstance(value, str):
        raise EnvelopeError(f"envelope {key} is not a string")
    return value


def _parse_time(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise EnvelopeError("received_at has no time zone")
    return moment.astimezone(UTC)


def encode_batch(encoded_envelopes: list[bytes]) -> bytes:
    """Join envelopes already rendered by `RawEnvelope.encode` into one message body."""
    return (
        b'{"format":"' + FORMAT.encode() + b'","envelopes":[' + b",".join(encoded_envelopes) + b"]}"
    )


def decode_batch(body: bytes) -> list[RawEnvelope]:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise EnvelopeError(f"message is not JSON: {exc}") from exc
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise EnvelopeError(f"message is not a {FORMAT} batch")
    envelopes = document.get("envelopes")
    if not isinstance(envelopes, list) or not envelopes:
        raise EnvelopeError("batch has no envelopes")
    return [RawEnvelope.from_wire(item) for item in envelopes]
