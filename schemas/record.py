"""The normalized call record: the shape of a `call_records` row and of a message on
`cdr.records`. Pure data, shared by every provider module and by the workers."""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from schemas.jsoncodec import canonical_json, dumps

# Bumped whenever the record format (columns or their meaning) changes.
SCHEMA_VERSION = 1

# record_id = uuid5(RECORD_NAMESPACE, "{source}\n{external_id}"): the same id on every re-push,
# on every worker and on replay, with no lookup needed.
RECORD_NAMESPACE = uuid.UUID("6f0d2c1e-8a7b-5e43-9c1d-3b2a4f5e6d70")


class Status(StrEnum):
    ANSWERED = "answered"
    NO_ANSWER = "no_answer"
    BUSY = "busy"
    REJECTED = "rejected"
    CANCELLED = "cancelled"
    FAILED = "failed"
    UNKNOWN = "unknown"


class CallType(StrEnum):
    GROUP_CALL = "group_call"
    VERIFICATION = "verification"
    TELEPHONE = "telephone"
    DIRECT_DIAL = "direct_dial"
    AGENT_GROUP_CALL = "agent_group_call"
    INBOUND = "inbound"
    OUTBOUND = "outbound"
    NOTIFICATION = "notification"
    BIDIRECTIONAL = "bidirectional"


class Direction(StrEnum):
    OUTBOUND = "outbound"
    INBOUND = "inbound"


class HangupBy(StrEnum):
    CALLER = "caller"
    CALLEE = "callee"
    AGENT = "agent"
    SYSTEM = "system"


def record_id_for(source: str, external_id: str) -> uuid.UUID:
    return uuid.uuid5(RECORD_NAMESPACE, f"{source}\n{external_id}")


@dataclass(frozen=True, slots=True)
class CallRecord:
    """Everything a provider module knows about one call. The deduplication ledger
    (delivery_count, revision, first/last seen, stored_at) is kept by the database."""

    source: str
    tenant: str
    provider: str
    event: str
    external_id: str
    raw: Mapping[str, Any]
    status: Status = Status.UNKNOWN
    call_type: CallType | None = None
    direction: Direction | None = None
    caller: str | None = None
    callee: str | None = None
    display_number: str | None = None
    country_code: str | None = None
    region: str | None = None
    hangup_cause: str | None = None
    hangup_by: HangupBy | None = None
    sip_code: int | None = None
    submitted_at: datetime | None = None
    started_at: datetime | None = None
    ringing_at: datetime | None = None
    answered_at: datetime | None = None
    ended_at: datetime | None = None
    ring_seconds: int | None = None
    talk_seconds: int | None = None
    billed_seconds: int | None = None
    billing_increment: str | None = None
    currency: str = "USD"
    rate: Decimal | None = None
    cost: Decimal | None = None
    base_cost: Decimal | None = None
    recording_url: str | None = None
    dtmf: str | None = None
    user_data: str | None = None
    agent_id: str | None = None
    agent_name: str | None = None
    agent_account: str | None = None
    agent_group: str | None = None
    labels: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @property
    def record_id(self) -> uuid.UUID:
        return record_id_for(self.source, self.external_id)

    def columns(self) -> dict[str, Any]:
        """The record as column name -> value, without `raw`."""
        values = {name: getattr(self, name) for name in _FIELDS_BUT_RAW}
        values["record_id"] = self.record_id
        return values


_FIELDS_BUT_RAW = tuple(f.name for f in dataclasses.fields(CallRecord) if f.name != "raw")

# Column order of the record part of `call_records` (the ledger columns come from the database).
RECORD_COLUMNS: tuple[str, ...] = (
    "record_id",
    *(f.name for f in dataclasses.fields(CallRecord)),
)
CONTENT_COLUMNS: tuple[str, ...] = tuple(
    c for c in RECORD_COLUMNS if c not in ("record_id", "source", "external_id")
)
MONEY_COLUMNS: tuple[str, ...] = ("rate", "cost", "base_cost")
LEDGER_COLUMNS: tuple[str, ...] = (
    "received_at",
    "stored_at",
    "first_seen_at",
    "last_seen_at",
    "delivery_count",
    "revision",
)


def content_hash(payload: Mapping[str, Any], volatile: frozenset[str]) -> bytes:
    """What makes two deliveries "the same content": the provider's payload, key order
    ignored, without the fields that change on every push (signatures, nonces)."""
    kept = {k: v for k, v in payload.items() if k not in volatile}
    return hashlib.sha256(canonical_json(kept)).digest()


@dataclass(frozen=True, slots=True)
class Ledger:
    received_at: datetime
    stored_at: datetime
    first_seen_at: datetime
    last_seen_at: datetime
    delivery_count: int
    revision: int


def routing_key(record: CallRecord) -> str:
    return f"{record.tenant}.{record.provider}.{record.event}.{record.status}"


def published_body(record: CallRecord, ledger: Ledger) -> bytes:
    """The JSON body published on `cdr.records`: every column but `raw`. Money is a decimal
    string, times are RFC 3339 in UTC. Its JSON Schema is `call_record.schema.json`."""
    body = record.columns()
    for money in MONEY_COLUMNS:
        amount = body[money]
        body[money] = None if amount is None else format(amount, "f")
    body["labels"] = list(record.labels)
    body["received_at"] = ledger.received_at
    body["stored_at"] = ledger.stored_at
    body["first_seen_at"] = ledger.first_seen_at
    body["last_seen_at"] = ledger.last_seen_at
    body["delivery_count"] = ledger.delivery_count
    body["revision"] = ledger.revision
    return dumps(body)
