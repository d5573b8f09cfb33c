"""Merging a batch's deliveries into versions, and the published record."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

from schemas.jsoncodec import loads
from schemas.providers import default_registry
from schemas.record import CONTENT_COLUMNS, LEDGER_COLUMNS, RECORD_COLUMNS, Ledger, published_body
from tests.support.samples import envelope, record_validator, sample
from tests.support.sources import load_test_sources
from workers.normalize import normalize_envelope
from workers.versions import Delivery, plan_versions

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def delivery(external_id: str, variant: int, seconds: int) -> Delivery:
    item = envelope(sample("nx-cc", external_id, variant), T0 + timedelta(seconds=seconds))
    (found,) = normalize_envelope(item, load_test_sources(), default_registry()).deliveries
    return found


def test_same_content_merges_and_each_change_starts_a_round() -> None:
    batch = [delivery("k", 0, 3), delivery("k", 0, 1), delivery("k", 1, 5), delivery("k", 0, 9)]
    random.Random(4).shuffle(batch)
    versions = plan_versions(batch)
    assert [(v.round, v.deliveries) for v in versions] == [(0, 2), (1, 1), (2, 1)]
    assert versions[0].first_received_at == T0 + timedelta(seconds=1)
    assert versions[0].last_received_at == T0 + timedelta(seconds=3)
    assert [v.first.received_at for v in versions] == [T0 + timedelta(seconds=s) for s in (1, 5, 9)]


def test_different_records_share_round_zero() -> None:
    versions = plan_versions([delivery("a", 0, 1), delivery("b", 0, 1), delivery("a", 0, 2)])
    assert sorted((v.first.record.external_id, v.round, v.deliveries) for v in versions) == [
        ("a", 0, 2),
        ("b", 0, 1),
    ]


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
    assert set(schema["required"]) == columns == set(schema["properties"])
    assert "raw" in CONTENT_COLUMNS
