"""What the store makes of a batch's deliveries before it writes them: for each record,
its distinct contents, each with the deliveries that carried it. Pure: no I/O.

- Several items for one record inside one request each count as a delivery; the last item
  is the request's content (a request makes one revision at most).
- Across the requests of a batch, each distinct content is kept once, with its count;
  the contents of a record are ordered by their newest report, so the last one is what
  the newest request said.

A backfill (a report `cdrflow reconcile` found in the provider's books) never competes with
a push: `set_aside_backfills` runs first, so that a record's contents in a batch are all
pushed or one backfill.

One pass to group and one sort per record: the cost follows the batch's size, whatever
the batch holds (10,000 versions of one call cost what 10,000 calls do)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from schemas.envelope import PUSH
from workers.batch import Content, Delivery, RecordVersions


@dataclass(slots=True)
class _Request:
    """The deliveries of one record in one request: the last item is the content."""

    last: Delivery
    deliveries: int = 0


@dataclass(slots=True)
class _Tally:
    brought_by: Delivery
    newest: Delivery
    deliveries: int


def set_aside_backfills(deliveries: list[Delivery]) -> tuple[list[Delivery], list[Delivery]]:
    """The deliveries the store plans, and the backfills it sets aside. Pushed content
    always wins: a backfill of a record that a push of this batch reports is set aside. Of
    a record only backfills report, the first request's is kept: it creates the record if
    none is stored, and any later one could only revise it, which a backfill never does."""
    if all(d.record.origin == PUSH for d in deliveries):
        return deliveries, []  # the usual batch
    pushed = {_key(d) for d in deliveries if d.record.origin == PUSH}
    first: dict[tuple[str, str], Delivery] = {}
    for delivery in deliveries:
        key = _key(delivery)
        if delivery.record.origin == PUSH or key in pushed:
            continue
        chosen = first.get(key)
        if chosen is None or delivery.order[:2] < chosen.order[:2]:
            first[key] = delivery
    first_request = {key: delivery.ingest_id for key, delivery in first.items()}
    kept: list[Delivery] = []
    set_aside: list[Delivery] = []
    for d in deliveries:
        planned = d.record.origin == PUSH or first_request.get(_key(d)) == d.ingest_id
        (kept if planned else set_aside).append(d)
    return kept, set_aside


def _key(delivery: Delivery) -> tuple[str, str]:
    return (delivery.record.source, delivery.record.external_id)


def plan_versions(deliveries: Iterable[Delivery]) -> list[RecordVersions]:
    """Group a batch's deliveries per record, then per content (see the module doc)."""
    requests: dict[tuple[str, str], dict[uuid.UUID, _Request]] = {}
    for delivery in deliveries:
        record = delivery.record
        key = (record.source, record.external_id)
        of_record = requests.get(key)
        if of_record is None:
            of_record = requests[key] = {}
        ingest_id = delivery.envelope.ingest_id
        request = of_record.get(ingest_id)
        if request is None:
            request = of_record[ingest_id] = _Request(delivery)
        elif delivery.item > request.last.item:
            request.last = delivery
        request.deliveries += 1
    return [_record_versions(list(of_record.values())) for of_record in requests.values()]


def _record_versions(requests: list[_Request]) -> RecordVersions:
    if len(requests) == 1:  # most records: one request, one content (what the rest makes)
        last = requests[0].last
        content = Content(0, last, requests[0].deliveries, last.received_at)
        return RecordVersions(last.record.record_id, [content])
    requests.sort(key=lambda r: r.last.order)
    tallies: dict[bytes, _Tally] = {}
    for request in requests:
        last = request.last
        tally = tallies.get(last.content_hash)
        if tally is None:
            tallies[last.content_hash] = _Tally(last, last, request.deliveries)
        else:
            tally.newest = last
            tally.deliveries += request.deliveries
    ordered = sorted(tallies.values(), key=lambda t: t.newest.order)
    contents = [
        Content(
            ordinal=ordinal,
            brought_by=tally.brought_by,
            deliveries=tally.deliveries,
            last_received_at=tally.newest.received_at,
        )
        for ordinal, tally in enumerate(ordered)
    ]
    return RecordVersions(requests[0].last.record.record_id, contents)
