"""What a batch is made of, on its way down the worker: the deliveries and rejections
`workers.normalize` makes of raw envelopes, the contents of a record the storage plans
(`workers.storage.revisions`), what the transaction commits (`BatchResult`) and the outbox
entries `workers.outbox` publishes. Every step imports these types from here, and this
module imports no step: data only, no I/O."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from schemas.envelope import RawEnvelope
from schemas.record import CallRecord


@dataclass(frozen=True, slots=True)
class Delivery:
    """One report of one request, normalized."""

    envelope: RawEnvelope
    item: int
    record: CallRecord
    content_hash: bytes

    @property
    def ingest_id(self) -> uuid.UUID:
        return self.envelope.ingest_id

    @property
    def received_at(self) -> datetime:
        return self.envelope.received_at

    @property
    def order(self) -> tuple[datetime, uuid.UUID, int]:
        return (self.received_at, self.ingest_id, self.item)


@dataclass(frozen=True, slots=True)
class Content:
    """One distinct content of one record within a batch."""

    ordinal: int  # its place among the record's contents in this batch, by newest report
    brought_by: Delivery  # the first request that carried it (its last item for the record)
    deliveries: int
    last_received_at: datetime  # its newest report

    @property
    def first_received_at(self) -> datetime:
        return self.brought_by.received_at  # requests are taken oldest first

    @property
    def record(self) -> CallRecord:
        return self.brought_by.record

    @property
    def content_hash(self) -> bytes:
        return self.brought_by.content_hash


@dataclass(frozen=True, slots=True)
class RecordVersions:
    """A record's contents in one batch, oldest newest-report first: the last is newest."""

    record_id: uuid.UUID
    contents: list[Content]

    @property
    def deliveries(self) -> int:
        return sum(c.deliveries for c in self.contents)


WHOLE_REQUEST = -1  # `item` of a rejection that concerns the request, not one report in it


@dataclass(frozen=True, slots=True)
class Rejection:
    envelope: RawEnvelope
    item: int
    reason: str
    message: str

    @property
    def ingest_id(self) -> uuid.UUID:
        return self.envelope.ingest_id


@dataclass
class Normalized:
    deliveries: list[Delivery] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)

    def extend(self, other: Normalized) -> None:
        self.deliveries.extend(other.deliveries)
        self.rejections.extend(other.rejections)


def as_request(envelope: RawEnvelope) -> dict[str, Any]:
    """The request, without its body, as kept in `rejected_callbacks.request`."""
    wire = envelope.to_wire()
    return {k: wire[k] for k in ("method", "path", "query", "content_type", "headers", "client")}


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    outbox_id: int  # 0 until the row is written
    record_id: uuid.UUID
    revision: int
    routing_key: str
    body: bytes
    slot: int = 0  # the outbox partition holding the row

    @property
    def message_id(self) -> str:
        return f"{self.record_id}:{self.revision}"


@dataclass(frozen=True, slots=True)
class BatchResult:
    published: list[OutboxEntry]  # new records and new revisions, to publish
    fresh: int  # deliveries not seen before (the rest were redelivered messages)
    versions: int  # distinct contents of records in the batch
    rejected: list[Rejection]
    # Backfills of records stored already, or pushed in the same batch: they change nothing
    # (not a delivery, not a revision). Counted in `fresh`, but no longer claimed.
    ignored_backfills: int = 0
