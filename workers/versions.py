"""What the store makes of a batch's deliveries before it writes them: one version per
content of each record, in the order the contents arrived. Pure: no I/O."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from itertools import groupby

from schemas.envelope import RawEnvelope
from schemas.record import CallRecord


@dataclass(frozen=True, slots=True)
class Delivery:
    """One report of one request, normalized."""

    envelope: RawEnvelope
    item: int
    record: CallRecord
    content_hash: bytes
    ingest_id: uuid.UUID = field(init=False)  # the envelope's, as the database keeps it

    def __post_init__(self) -> None:
        object.__setattr__(self, "ingest_id", uuid.UUID(self.envelope.ingest_id))

    @property
    def received_at(self) -> datetime:
        return self.envelope.received_at

    @property
    def key(self) -> tuple[str, str]:
        return (self.record.source, self.record.external_id)


@dataclass(frozen=True, slots=True)
class Version:
    """One content of one record within a batch, and the deliveries that carried it.
    `round` orders the versions of a key: one statement may not touch a key twice."""

    round: int
    first: Delivery
    deliveries: int
    first_received_at: datetime
    last_received_at: datetime


def plan_versions(deliveries: Iterable[Delivery]) -> list[Version]:
    """Merge a batch's deliveries per record: consecutive deliveries of the same content
    (in order of arrival) become one version; each change of content starts the next."""
    by_key: dict[tuple[str, str], list[Delivery]] = {}
    for delivery in deliveries:
        by_key.setdefault(delivery.key, []).append(delivery)
    versions = []
    for items in by_key.values():
        items.sort(key=lambda d: (d.received_at, d.ingest_id, d.item))
        for round_, (_, run) in enumerate(groupby(items, key=lambda d: d.content_hash)):
            group = list(run)
            versions.append(
                Version(
                    round=round_,
                    first=group[0],
                    deliveries=len(group),
                    first_received_at=group[0].received_at,
                    last_received_at=group[-1].received_at,
                )
            )
    return versions
