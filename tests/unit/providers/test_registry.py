"""What every registered provider must agree on with the rest of cdrflow: the record
schema's `provider` and `event` enums, its own name, and `simulate()` round trips."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from schemas.providers import default_registry

from .conftest import NOW, envelope_of, make_source, simulated_records

SCHEMA = Path(__file__).resolve().parents[3] / "schemas" / "call_record.schema.json"
REGISTRY = default_registry()


def test_the_record_schema_enums_are_the_registry() -> None:
    properties = json.loads(SCHEMA.read_text())["properties"]
    vendors = {name.split(".", 1)[0] for name in REGISTRY}
    events = {name.split(".", 1)[1] for name in REGISTRY}
    assert set(properties["provider"]["enum"]) == vendors
    assert set(properties["event"]["enum"]) == events


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_records_are_named_as_the_provider_is_registered(name: str) -> None:
    for _, record, external_id in simulated_records(name, make_source(name), range(5)):
        assert f"{record.provider}.{record.event}" == name
        assert record.external_id == external_id


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_simulate_reports_the_call_it_is_asked_for(name: str) -> None:
    provider, source = REGISTRY[name], make_source(name)
    callback = provider.simulate(random.Random(7), NOW, source, "call-42")
    assert callback.external_id == "call-42"
    envelope = envelope_of(name, callback)
    provider.authenticate(envelope, callback.headers, source, NOW.timestamp())
    (payload,) = provider.parse(envelope, source)
    assert provider.normalize(payload, source).external_id == "call-42"
