"""Schema evolution: within one `schema_version` the published record only ever gains
fields. Dropping, renaming or retyping a field needs a version bump, and a new entry in
snapshots/call_record_fields.json (the field list of every version, checked in)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from schemas.jsoncodec import loads
from schemas.record import SCHEMA_VERSION, CallRecord, Ledger, published_body
from tests.support.samples import record_validator

ROOT = Path(__file__).resolve().parents[2]
SNAPSHOT = Path(__file__).parent / "snapshots" / "call_record_fields.json"
_JSON_TYPES = {str: "string", bool: "boolean", int: "integer", float: "number", type(None): "null"}


def json_types(prop: dict[str, Any]) -> list[str]:
    """The JSON types a property of the schema allows, however it says so; a string's
    format goes with it (`string/date-time`): a time turned into a plain string changes
    its meaning."""
    if "anyOf" in prop:
        return sorted({kind for branch in prop["anyOf"] for kind in json_types(branch)})
    if "type" in prop:
        kinds = prop["type"] if isinstance(prop["type"], list) else [prop["type"]]
        form = prop.get("format")
        return sorted(f"{k}/{form}" if form and k == "string" else k for k in kinds)
    values = prop["enum"] if "enum" in prop else [prop["const"]]
    return sorted({_JSON_TYPES[type(v)] for v in values})


def schema_fields() -> dict[str, list[str]]:
    schema = json.loads((ROOT / "schemas" / "call_record.schema.json").read_text())
    return {name: json_types(prop) for name, prop in schema["properties"].items()}


def snapshot() -> dict[str, dict[str, list[str]]]:
    loaded: dict[str, dict[str, list[str]]] = json.loads(SNAPSHOT.read_text())
    return loaded


def published_fields() -> set[str]:
    record = CallRecord("src", "acme", "nxcloud", "voice_dr", "ext-1", raw={"a": 1})
    moment = datetime(2025, 1, 1, tzinfo=UTC)
    ledger = Ledger(moment, moment, moment, moment, 1, 1)
    body = loads(published_body(record, ledger))
    assert body["record_id"] == str(record.record_id)
    return set(body)


def test_the_current_schema_version_has_a_snapshot() -> None:
    assert str(SCHEMA_VERSION) in snapshot(), (
        f"schema_version {SCHEMA_VERSION} has no field list in {SNAPSHOT.name}: add one"
    )


def test_no_field_of_this_version_was_dropped_renamed_or_retyped() -> None:
    frozen = snapshot()[str(SCHEMA_VERSION)]
    current = schema_fields()
    missing = sorted(set(frozen) - set(current))
    assert not missing, f"fields gone without a schema_version bump: {missing}"
    retyped = {f: (frozen[f], current[f]) for f in frozen if frozen[f] != current[f]}
    assert not retyped, f"fields retyped without a schema_version bump: {retyped}"


def test_fields_added_within_this_version_are_written_into_its_snapshot() -> None:
    added = sorted(set(schema_fields()) - set(snapshot()[str(SCHEMA_VERSION)]))
    assert not added, f"new fields {added}: add them to {SNAPSHOT.name} under {SCHEMA_VERSION}"


def test_the_published_body_has_exactly_the_schemas_fields() -> None:
    assert published_fields() == set(schema_fields())


def test_the_body_and_the_headers_say_the_version() -> None:
    from workers.batch import OutboxEntry
    from workers.outbox import record_message

    record = CallRecord("src", "acme", "nxcloud", "voice_dr", "ext-1", raw={})
    moment = datetime(2025, 1, 1, tzinfo=UTC)
    body = published_body(record, Ledger(moment, moment, moment, moment, 1, 1))
    assert loads(body)["schema_version"] == SCHEMA_VERSION
    message = record_message(OutboxEntry(0, record.record_id, 1, "a.b.c.d", body))
    assert message.headers is not None
    assert message.headers["schema_version"] == SCHEMA_VERSION


def test_a_consumer_validating_with_the_schema_accepts_a_field_added_later() -> None:
    """The schema follows its own evolution rule; the producer's own check stays closed."""
    schema = json.loads((ROOT / "schemas" / "call_record.schema.json").read_text())
    record = CallRecord("src", "acme", "nxcloud", "voice_dr", "ext-1", raw={"a": 1})
    moment = datetime(2025, 1, 1, tzinfo=UTC)
    body = loads(published_body(record, Ledger(moment, moment, moment, moment, 1, 1)))
    later = {**body, "a_field_added_later": "x"}
    consumer = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    consumer.validate(later)
    record_validator().validate(body)
    with pytest.raises(jsonschema.ValidationError, match="a_field_added_later"):
        record_validator().validate(later)
