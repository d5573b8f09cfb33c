"""Grouping a batch's deliveries per record and content, what backfills a batch sets
aside, and the published record."""

from __future__ import annotations

import dataclasses
import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

from schemas.envelope import BACKFILL, PUSH
from schemas.jsoncodec import dumps, loads
from schemas.providers import default_registry
from schemas.record import CONTENT_COLUMNS, LEDGER_COLUMNS, RECORD_COLUMNS, Ledger, published_body
from tests.support.samples import Sample, envelope, record_validator, sample
from tests.support.sources import load_test_sources
from workers.batch import Delivery
from workers.normalize import normalize_envelope
from workers.storage.revisions import plan_versions, set_aside_backfills

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


def voice_array(external_id: str, variants: list[int]) -> Sample:
    items = [loads(sample("nx-voice", external_id, v).body) for v in variants]
    first = sample("nx-voice", external_id)
    return Sample(first.source, external_id, first.method, dumps(items), first.content_type)


def delivery(external_id: str, variant: int, seconds: int) -> Delivery:
    item = envelope(sample("nx-cc", external_id, variant), at(seconds))
    (found,) = normalize_envelope(item, load_test_sources(), default_registry()).deliveries
    return found


def test_same_content_merges_and_contents_are_ordered_by_their_newest_report() -> None:
    batch = [delivery("k", 0, 3), delivery("k", 0, 1), delivery("k", 1, 5), delivery("k", 0, 9)]
    random.Random(4).shuffle(batch)
    (versions,) = plan_versions(batch)
    assert [(c.ordinal, c.deliveries) for c in versions.contents] == [(0, 1), (1, 3)]
    changed, first = versions.contents
    assert changed.record.labels == ("Intended customers", "High level")
    assert (first.first_received_at, first.last_received_at) == (at(1), at(9))
    assert first.brought_by.received_at == at(1)
    assert versions.deliveries == 4


def test_items_of_one_request_count_as_deliveries_and_the_last_is_its_content() -> None:
    request = envelope(voice_array("k", [0, 1, 2, 1, 3]), at(0))
    deliveries = normalize_envelope(request, load_test_sources(), default_registry()).deliveries
    random.Random(2).shuffle(deliveries)
    (versions,) = plan_versions(deliveries)
    (content,) = versions.contents
    assert (content.deliveries, content.brought_by.item) == (5, 4)
    assert content.record.talk_seconds == 16


def test_different_records_are_planned_apart() -> None:
    planned = plan_versions([delivery("a", 0, 1), delivery("b", 0, 1), delivery("a", 0, 2)])
    assert sorted(
        (v.contents[0].record.external_id, len(v.contents), v.deliveries) for v in planned
    ) == [("a", 1, 2), ("b", 1, 1)]


def test_the_published_body_follows_its_json_schema() -> None:
    record = delivery("k", 1, 0).record
    ledger = Ledger(T0, T0, T0, T0 + timedelta(minutes=30), 4, 2)
    body = loads(published_body(record, ledger))
    record_validator().validate(body)
    assert body["cost"] == "0.0135"
    assert body["revision"] == 2
    assert body["delivery_count"] == 4
    assert body["received_at"] == "2026-01-01T00:00:00Z"


def test_schema_and_columns_agree() -> None:
    schema_file = Path(__file__).resolve().parents[2] / "schemas" / "call_record.schema.json"
    schema = json.loads(schema_file.read_text())
    columns = {c for c in RECORD_COLUMNS if c != "raw"} | set(LEDGER_COLUMNS)
    assert columns == set(schema["properties"])
    # A field added within a schema_version is optional: the records published before it
    # (still in the stream) carry none, and must still validate.
    assert set(schema["required"]) == columns - {"origin"}
    assert "raw" in CONTENT_COLUMNS


def backfill(external_id: str, variant: int, seconds: int) -> Delivery:
    item = envelope(sample("nx-cc", external_id, variant), at(seconds))
    item = dataclasses.replace(item, origin=BACKFILL)
    (found,) = normalize_envelope(item, load_test_sources(), default_registry()).deliveries
    return found


def test_a_batch_of_pushes_is_planned_whole() -> None:
    batch = [delivery("a", 0, 1), delivery("a", 1, 2)]
    assert set_aside_backfills(batch) == (batch, [])


def test_a_push_in_the_batch_wins_over_any_backfill_of_its_record() -> None:
    pushed = delivery("a", 0, 5)
    batch = [backfill("a", 0, 1), pushed, backfill("a", 1, 9), backfill("b", 0, 2)]
    kept, set_aside = set_aside_backfills(batch)
    assert set_aside == [batch[0], batch[2]]
    assert kept == [pushed, batch[3]]
    (a_versions, _) = plan_versions(kept)
    assert [c.record.origin for c in a_versions.contents] == [PUSH]


def test_of_backfills_alone_the_first_request_is_kept() -> None:
    later, first, other = backfill("a", 1, 7), backfill("a", 0, 3), backfill("a", 2, 5)
    kept, set_aside = set_aside_backfills([later, first, other])
    assert (kept, set_aside) == ([first], [later, other])


def test_the_published_body_says_the_records_origin() -> None:
    ledger = Ledger(T0, T0, T0, T0, 1, 1)
    made = {"push": delivery("k", 1, 0), "backfill": backfill("k", 1, 0)}
    for origin, found in made.items():
        body = loads(published_body(found.record, ledger))
        record_validator().validate(body)
        assert body["origin"] == origin


def test_a_record_published_before_it_had_an_origin_still_validates() -> None:
    record = backfill("k", 1, 0).record
    body = loads(published_body(record, Ledger(T0, T0, T0, T0, 1, 1)))
    assert body["origin"] == "backfill"
    record_validator().validate(body)
    del body["origin"]  # as published before the field was added, in the same version
    record_validator().validate(body)
    assert not record_validator().is_valid({**body, "origin": "guessed"})
