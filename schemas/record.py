"""The normalized call record: the shape of a `call_records` row and of a message on
`cdr.records`. Pure data, shared by every provider module and by the workers."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import operator
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from schemas.envelope import PUSH
from schemas.jsoncodec import dumps

# Bumped whenever the record format (columns or their meaning) changes.
SCHEMA_VERSION = 1
# The AMQP `type` property of a record's message (schemas/asyncapi.yaml, messageType).
MESSAGE_TYPE = "cdrflow.call_record"

# record_id = uuid5(RECORD_NAMESPACE, "{source}\n{external_id}"): the same id on every re-push,
# on every worker and on replay, with no lookup needed.
RECORD_NAMESPACE = uuid.UUID("6f0d2c1e-8a7b-5e43-9c1d-3b2a4f5e6d70")

# What the columns can hold. A value outside is not refused: it moves to `extra`, under
# the column's name (see `CallRecord.__post_init__`), and the record is stored.
INT4 = (-(2**31), 2**31 - 1)  # integer columns
MONEY_MAX_EXPONENT = 24  # numeric columns: 1e24 and 1e-24 are no amounts of money
MONEY_MAX_DIGITS = 40
# Times outside these bounds are not call times.
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)


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


# A record's id is read several times on its way through a worker (ledger rows, outbox,
# published body); a cache hit costs a fraction of computing it. Sized to hold several
# batches; bounded, so a worker's memory stays flat.
@functools.lru_cache(maxsize=8192)
def record_id_for(source: str, external_id: str) -> uuid.UUID:
    # uuid.uuid5, without what makes it slow (an import, the namespace's bytes and
    # UUID(bytes=..., version=5) on every call): the same value.
    name = f"{source}\n{external_id}".encode()
    digest = hashlib.sha1(_NAMESPACE_BYTES + name, usedforsecurity=False).digest()
    value = int.from_bytes(digest[:16]) & _VERSION_MASK | _VERSION_5
    return uuid.UUID(int=value)


_NAMESPACE_BYTES = RECORD_NAMESPACE.bytes
_VERSION_MASK = ~(0xF000 << 64 | 0xC000 << 48) & (1 << 128) - 1  # version and variant bits
_VERSION_5 = 0x5000 << 64 | 0x8000 << 48  # version 5, RFC 4122 variant


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
    # "push" or "backfill": set from the envelope by the worker (`workers.normalize`),
    # never by a provider module: where the report came from is not the provider's to say.
    origin: str = PUSH
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        """Every record a provider builds is storable: a column value PostgreSQL cannot
        hold (an int32 overflow from `cycle * size`, say) or that is no call datum moves to
        `extra` under the column's name, here, for every provider at once."""
        misfits = {
            name: value
            for name, value in zip(_CHECKED_COLUMNS, _checked_values(self), strict=True)
            if value is not None and not _fits(value)
        }
        if misfits:
            for name in misfits:
                object.__setattr__(self, name, None)
            kept = {name: _as_extra(value) for name, value in misfits.items()}
            object.__setattr__(self, "extra", {**kept, **self.extra})
        for name in MONEY_COLUMNS:
            amount = getattr(self, name)
            if amount is not None and amount.is_zero() and amount.is_signed():
                # numeric has no negative zero: the row says 0 (0.00), so must every message.
                object.__setattr__(self, name, amount.copy_abs())

    @property
    def record_id(self) -> uuid.UUID:
        return record_id_for(self.source, self.external_id)

    def columns(self) -> dict[str, Any]:
        """The record as column name -> value, without `raw`."""
        values = {name: getattr(self, name) for name in _FIELDS_BUT_RAW}
        values["record_id"] = self.record_id
        return values


_FIELDS_BUT_RAW = tuple(f.name for f in dataclasses.fields(CallRecord) if f.name != "raw")
INTEGER_COLUMNS: tuple[str, ...] = (
    "sip_code",
    "ring_seconds",
    "talk_seconds",
    "billed_seconds",
    "schema_version",
)
TIME_COLUMNS: tuple[str, ...] = (
    "submitted_at",
    "started_at",
    "ringing_at",
    "answered_at",
    "ended_at",
)


def _fits(value: Any) -> bool:
    # The usual exact types first; subclasses (bool among them) take the checks below.
    kind = type(value)
    if kind is int:
        return bool(INT4[0] <= value <= INT4[1])
    if kind is datetime:
        return bool(value.tzinfo is not None and EARLIEST <= value < LATEST)
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return INT4[0] <= value <= INT4[1]
    if isinstance(value, Decimal):
        return (
            value.is_finite()
            and abs(value.adjusted()) <= MONEY_MAX_EXPONENT
            and len(value.as_tuple().digits) <= MONEY_MAX_DIGITS
        )
    if isinstance(value, datetime):
        return value.tzinfo is not None and EARLIEST <= value < LATEST
    return False


def _as_extra(value: Any) -> Any:
    """A misfit as JSON can hold it, never expanded: orjson writes no integer beyond 64
    bits, and a Decimal keeps its own text."""
    if isinstance(value, int) and not isinstance(value, bool):
        return Decimal(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return value


# Column order of the record part of `call_records` (the ledger columns come from the database).
RECORD_COLUMNS: tuple[str, ...] = (
    "record_id",
    *(f.name for f in dataclasses.fields(CallRecord)),
)
CONTENT_COLUMNS: tuple[str, ...] = tuple(
    c for c in RECORD_COLUMNS if c not in ("record_id", "source", "external_id")
)
MONEY_COLUMNS: tuple[str, ...] = ("rate", "cost", "base_cost")
# What `CallRecord.__post_init__` checks on every record, read with one call.
_CHECKED_COLUMNS = (*INTEGER_COLUMNS, *MONEY_COLUMNS, *TIME_COLUMNS)
_checked_values = operator.attrgetter(*_CHECKED_COLUMNS)
LEDGER_COLUMNS: tuple[str, ...] = (
    "received_at",
    "stored_at",
    "first_seen_at",
    "last_seen_at",
    "delivery_count",
    "revision",
)


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
