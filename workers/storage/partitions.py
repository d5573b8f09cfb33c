"""The tables partitioned by time, and their calendar: which partition holds a moment,
what its bounds are, what it is called. Pure: no I/O (`workers.storage.partition_retention`
acts on it).

Each table is range-partitioned on one column that tells when its row arrived:

- `ingest_id`, a UUID version 7 made by the ingress for each request: its first 48 bits
  are the Unix time in milliseconds. Partitioning on it keeps the tables' unique keys
  `(ingest_id, item)` as they are (a partitioned table's unique key must include the
  partition key), so a delivery claimed twice still collides, in the one partition its
  ingest id names, and the statements of every release keep working unchanged.
- or a `timestamptz` column, for a table whose key is not time-ordered.

A partition covers one UTC day or one UTC month (`Granularity`), from its first instant
included to the next one excluded. Each table also has a DEFAULT partition, a safety net
for a row no partition covers (an ingest id that is not a UUID 7, or a replay of a
callback older than the partitions kept); partitions are created ahead so that it stays
empty."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum


class Granularity(StrEnum):
    DAY = "day"
    MONTH = "month"


class KeyKind(StrEnum):
    UUID7 = "uuid7"
    TIMESTAMP = "timestamptz"


@dataclass(frozen=True)
class PartitionedTable:
    name: str
    key: str  # the partition key column
    kind: KeyKind
    granularity: Granularity
    retention_setting: str  # the Settings field: days kept, 0 = forever
    ahead: int  # partitions kept created beyond the current one
    # Whether its rows have a key in `call_keys`, deleted before a partition is dropped.
    keyed: bool = False

    @property
    def default_partition(self) -> str:
        return f"{self.name}_default"

    @property
    def legacy_partition(self) -> str:
        """The table as it was before partitioning, attached whole as its first
        partition (`workers.storage.partition_retention.partition_in_place`)."""
        return f"{self.name}_legacy"

    def partition_name(self, start: datetime) -> str:
        stamp = "%Y%m%d" if self.granularity is Granularity.DAY else "%Y%m"
        return f"{self.name}_p{start.astimezone(UTC).strftime(stamp)}"


# Daily for the ledger of deliveries: at ten million calls a day it takes about 1.6 GB a
# day, and retention (35 days by default) drops a day at a time. Monthly for rejected
# callbacks: a few a day normally, kept for months or forever, and a partition a day would
# leave thousands of nearly empty partitions for the planner to consider.
#
# Monthly for the records, their revisions and their original bytes, on `stored_at`, the
# first commit of the row, which never changes (an upsert never moves a row between
# partitions). A record's revisions are stored at or after the record itself, so once the
# records of a month and before are past retention, so are the revisions of that month:
# both follow CDRFLOW_RETENTION_RECORDS_DAYS. The exact deduplication key stays global in
# the unpartitioned `call_keys` (docs/storage.md), whose rows of a month of records are
# deleted before that month is dropped (`keyed`).
PARTITIONED: dict[str, PartitionedTable] = {
    table.name: table
    for table in (
        PartitionedTable(
            "deliveries", "ingest_id", KeyKind.UUID7, Granularity.DAY,
            "delivery_retention_days", ahead=7,
        ),
        PartitionedTable(
            "rejected_callbacks", "ingest_id", KeyKind.UUID7, Granularity.MONTH,
            "retention_rejected_days", ahead=2,
        ),
        PartitionedTable(
            "call_records", "stored_at", KeyKind.TIMESTAMP, Granularity.MONTH,
            "retention_records_days", ahead=2, keyed=True,
        ),
        PartitionedTable(
            "record_revisions", "stored_at", KeyKind.TIMESTAMP, Granularity.MONTH,
            "retention_records_days", ahead=2,
        ),
        PartitionedTable(
            "originals", "stored_at", KeyKind.TIMESTAMP, Granularity.MONTH,
            "retention_originals_days", ahead=2,
        ),
    )
}  # fmt: skip

# The tables each in-place migration step partitions (`workers.storage.partition_retention`).
PARTITIONED_BY_STEP: dict[int, tuple[str, ...]] = {
    9: ("deliveries", "rejected_callbacks"),
    12: ("call_records", "record_revisions", "originals"),
}


def period_start(granularity: Granularity, moment: datetime) -> datetime:
    utc = moment.astimezone(UTC)
    day = utc.replace(hour=0, minute=0, second=0, microsecond=0)
    return day if granularity is Granularity.DAY else day.replace(day=1)


def next_start(granularity: Granularity, start: datetime) -> datetime:
    if granularity is Granularity.DAY:
        return start + timedelta(days=1)
    return (start.replace(day=28) + timedelta(days=4)).replace(day=1)


def periods_ahead(table: PartitionedTable, now: datetime) -> list[tuple[datetime, datetime]]:
    """The periods that must have a partition now: the current one and `ahead` more."""
    start = period_start(table.granularity, now)
    periods = []
    for _ in range(table.ahead + 1):
        end = next_start(table.granularity, start)
        periods.append((start, end))
        start = end
    return periods


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def uuid7_floor(moment: datetime) -> uuid.UUID:
    """The least UUID 7 of the millisecond `moment` falls in: every ingest id made at or
    after it sorts at or after this value, every earlier one before it."""
    millis = (moment - _EPOCH) // timedelta(milliseconds=1)
    return uuid.UUID(int=millis << 80)


def uuid7_time(value: uuid.UUID) -> datetime:
    return datetime.fromtimestamp((value.int >> 80) / 1000, UTC)


def bound_literal(kind: KeyKind, moment: datetime) -> str:
    """The SQL literal of a partition bound at `moment`."""
    if kind is KeyKind.UUID7:
        return f"'{uuid7_floor(moment)}'::uuid"
    return f"'{moment.astimezone(UTC).isoformat()}'::timestamptz"


_UPPER = re.compile(r"TO \((?:'([^']*)'|(MAXVALUE))\)")


def upper_bound_time(kind: KeyKind, bound_expression: str) -> datetime | None:
    """When a partition ends, from its bound as `pg_get_expr(relpartbound, oid)` writes
    it (`FOR VALUES FROM (...) TO ('...')`); None for DEFAULT and MAXVALUE, which never
    end."""
    match = _UPPER.search(bound_expression)
    if match is None or match[2]:
        return None
    if kind is KeyKind.UUID7:
        return uuid7_time(uuid.UUID(match[1]))
    return datetime.fromisoformat(match[1]).astimezone(UTC)


def horizon(now: datetime, days: int) -> datetime | None:
    """Rows older than this are past retention; None: kept forever."""
    return now - timedelta(days=days) if days > 0 else None
