"""`cdrflow history`: every revision of one record, and its deliveries.

A revision is one distinct content the record has had (`record_revisions`): its hash, the
delivery that brought it (ingest id, item, received time), how many deliveries carried it,
and what changed from the revision before, and where it came from (`origin`: pushed by
the provider, or a backfill `cdrflow reconcile` found in the provider's books). The
deliveries themselves (one row per request item, from the `deliveries` ledger) are listed
while the ledger keeps them (`delivery_retention_days`). Then what the provider's books say
differently about the record (`reconciliation_discrepancies`): kept, never applied."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from schemas.envelope import PUSH
from schemas.jsoncodec import dumps, loads_exact
from schemas.record import record_id_for

# The view gives every revision's content, the shown one's from call_records (migration 8).
REVISIONS = """
SELECT source, external_id, revision, content_hash, ingest_id, item, received_at,
    first_seen_at, last_seen_at, delivery_count, content, shown, reprocessed_at
FROM record_history
WHERE record_id = $1
ORDER BY revision
"""
# A record's deliveries: the re-pushes, through the index of re-pushes by record, and the
# first delivery of each revision, which the revision names ($2, $3: its ingest ids and
# items), by primary key (schema 16: docs/storage.md). Rows of the two arrays' product that
# are deliveries of the record are its deliveries too: the same rows as all of
# `deliveries WHERE record_id = $1`.
DELIVERIES = """
SELECT ingest_id, item, received_at FROM deliveries WHERE record_id = $1 AND repush
UNION
SELECT ingest_id, item, received_at FROM deliveries
WHERE ingest_id = ANY($2::uuid[]) AND item = ANY($3::integer[]) AND record_id = $1
ORDER BY received_at, ingest_id, item
"""
DISCREPANCIES = """
SELECT field, ours, theirs, found_at FROM reconciliation_discrepancies WHERE record_id = $1
ORDER BY field
"""
# The record's id is the uuid5 of its key (schemas.record): the look-up is by primary key.
_RECORD_ID = """
SELECT record_id FROM call_records WHERE record_id = $1 AND source = $2 AND external_id = $3
"""


@dataclass(frozen=True, slots=True)
class Revision:
    revision: int
    content_hash: bytes
    ingest_id: uuid.UUID
    item: int
    received_at: datetime
    first_seen_at: datetime
    last_seen_at: datetime
    delivery_count: int
    shown: bool  # the revision `call_records` shows
    changed: dict[str, tuple[Any, Any]]  # column -> (before, after); empty for the first
    origin: str  # "push" or "backfill"
    # When `cdrflow reprocess` made it from the original request of the revision before
    # (no delivery brought it); None for a revision a delivery brought.
    reprocessed_at: datetime | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": "revision",
            "revision": self.revision,
            "content_hash": self.content_hash.hex(),
            "ingest_id": str(self.ingest_id),
            "item": self.item,
            "received_at": self.received_at,
            "first_seen_at": self.first_seen_at,
            "last_seen_at": self.last_seen_at,
            "delivery_count": self.delivery_count,
            "shown": self.shown,
            "origin": self.origin,
            "reprocessed_at": self.reprocessed_at,
            "changed": {k: {"from": a, "to": b} for k, (a, b) in self.changed.items()},
        }


@dataclass(frozen=True, slots=True)
class Delivery:
    ingest_id: uuid.UUID
    item: int
    received_at: datetime

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": "delivery",
            "ingest_id": str(self.ingest_id),
            "item": self.item,
            "received_at": self.received_at,
        }


@dataclass(frozen=True, slots=True)
class Discrepancy:
    """What the provider's books say differently on one field that bills."""

    field: str
    ours: str | None
    theirs: str | None
    found_at: datetime

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": "discrepancy",
            "field": self.field,
            "ours": self.ours,
            "theirs": self.theirs,
            "found_at": self.found_at,
        }


@dataclass(frozen=True, slots=True)
class RecordHistory:
    record_id: uuid.UUID
    source: str
    external_id: str
    revisions: list[Revision]
    deliveries: list[Delivery]
    discrepancies: list[Discrepancy]

    def json_lines(self) -> Iterator[str]:
        head = {"record_id": str(self.record_id), "source": self.source}
        entries: list[Revision | Delivery | Discrepancy] = [
            *self.revisions,
            *self.deliveries,
            *self.discrepancies,
        ]
        for entry in entries:
            yield dumps({**head, "external_id": self.external_id, **entry.as_json()}).decode()

    def text_lines(self) -> Iterator[str]:
        shown = next((r for r in self.revisions if r.shown), None)
        total = sum(r.delivery_count for r in self.revisions)
        yield (
            f"{self.source} {self.external_id} (record {self.record_id}):"
            f" {len(self.revisions)} revision(s), {total} delivery(ies),"
            f" showing {shown.revision if shown else None}"
            f" ({shown.origin if shown else 'none'})"
        )
        for r in self.revisions:
            mark = "  <- shown" if r.shown else ""
            how = r.origin
            if r.reprocessed_at is not None:
                how += f", reprocessed at {_when(r.reprocessed_at)}"
            yield (
                f"revision {r.revision}  {how}  hash {r.content_hash.hex()[:16]}"
                f"  brought by {r.ingest_id}#{r.item} at {_when(r.received_at)}"
                f"  deliveries {r.delivery_count}"
                f" (first {_when(r.first_seen_at)}, last {_when(r.last_seen_at)}){mark}"
            )
            if r.revision == self.revisions[0].revision:
                yield "    first content"
            for column, (before, after) in r.changed.items():
                yield f"    {column}: {_text(before)} -> {_text(after)}"
        if self.deliveries:
            yield f"deliveries kept in the ledger ({len(self.deliveries)}):"
        for d in self.deliveries:
            yield f"    {_when(d.received_at)}  {d.ingest_id}#{d.item}"
        if self.discrepancies:
            yield (f"the provider's books differ ({len(self.discrepancies)}), kept, not applied:")
        for x in self.discrepancies:
            yield (
                f"    {x.field}: ours {_or_none(x.ours)}, theirs {_or_none(x.theirs)}"
                f"  (found {_when(x.found_at)})"
            )


async def find_record(
    connection: asyncpg.Connection, source: str, external_id: str
) -> uuid.UUID | None:
    found: uuid.UUID | None = await connection.fetchval(
        _RECORD_ID, record_id_for(source, external_id), source, external_id
    )
    return found


async def load_history(
    connection: asyncpg.Connection, record_id: uuid.UUID
) -> RecordHistory | None:
    rows = await connection.fetch(REVISIONS, record_id)
    if not rows:
        return None
    revisions = []
    previous: dict[str, Any] | None = None
    for row in rows:
        content = loads_exact(row["content"])
        # A revision stored before records had an origin was pushed.
        content.setdefault("origin", PUSH)
        revisions.append(
            Revision(
                revision=row["revision"],
                content_hash=bytes(row["content_hash"]),
                ingest_id=row["ingest_id"],
                item=row["item"],
                received_at=row["received_at"],
                first_seen_at=row["first_seen_at"],
                last_seen_at=row["last_seen_at"],
                delivery_count=row["delivery_count"],
                shown=row["shown"],
                changed=_changes(previous, content),
                origin=content["origin"],
                reprocessed_at=row["reprocessed_at"],
            )
        )
        previous = content
    deliveries = [
        Delivery(row["ingest_id"], row["item"], row["received_at"])
        for row in await connection.fetch(
            DELIVERIES,
            record_id,
            list({r.ingest_id for r in revisions}),
            list({r.item for r in revisions}),
        )
    ]
    discrepancies = [
        Discrepancy(row["field"], row["ours"], row["theirs"], row["found_at"])
        for row in await connection.fetch(DISCREPANCIES, record_id)
    ]
    return RecordHistory(
        record_id, rows[0]["source"], rows[0]["external_id"], revisions, deliveries, discrepancies
    )


def _changes(before: dict[str, Any] | None, after: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    if before is None:
        return {}
    return {
        key: (before.get(key), after.get(key))
        for key in sorted(before.keys() | after.keys())
        if before.get(key) != after.get(key)
    }


def _when(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _or_none(value: str | None) -> str:
    return "none" if value is None else value


def _text(value: Any) -> str:
    return dumps(value).decode() if value is not None else "null"


async def print_history(
    database_url: str, key: tuple[str, str] | uuid.UUID, *, as_json: bool = False
) -> int:
    """Print a record's history; 1 when there is no such record."""
    connection = await asyncpg.connect(database_url)
    try:
        record_id = key if isinstance(key, uuid.UUID) else await find_record(connection, *key)
        found = await load_history(connection, record_id) if record_id is not None else None
    finally:
        await connection.close()
    if found is None:
        print(f"cdrflow history: no record {key}", file=sys.stderr)
        return 1
    for line in found.json_lines() if as_json else found.text_lines():
        print(line)
    return 0
