"""What every registered provider must agree on with the rest of cdrflow, whichever
providers are registered: its name, `simulate()` round trips, and answers the ingress can
give. Each provider's own contract (methods, zone, signing, exact answers) is stated in its
own test module (`test_ingress_contract`); the schema files' enums are generated from the
registry (tests/unit/test_schema_files.py)."""

from __future__ import annotations

import importlib
import pkgutil
import random
import re

import pytest

import schemas.providers
from schemas.providers import HTTP_STATUS, Outcome, default_registry
from schemas.sources import parse_zone

from .conftest import NOW, envelope_of, make_envelope, make_source, simulated_records

REGISTRY = default_registry()
# "vendor.event": each part one word of a routing key `{tenant}.{provider}.{event}.{status}`
NAME = re.compile(r"[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*")
HTTP_METHODS = {"GET", "POST", "PUT"}


def test_every_provider_module_is_registered() -> None:
    """A module that defines a `PROVIDER` and is left out of the registry is a provider no
    source can name: the one registry line was forgotten."""
    package = schemas.providers
    defined = {
        module.PROVIDER.name
        for info in pkgutil.iter_modules(package.__path__, f"{package.__name__}.")
        if hasattr(module := importlib.import_module(info.name), "PROVIDER")
    }
    assert defined
    assert defined <= set(REGISTRY), defined - set(REGISTRY)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_the_registry_key_is_the_providers_name_and_a_routing_key_part(name: str) -> None:
    assert REGISTRY[name].name == name
    assert NAME.fullmatch(name)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_methods_and_zone_are_ones_the_ingress_serves(name: str) -> None:
    provider = REGISTRY[name]
    assert provider.methods
    assert provider.methods <= HTTP_METHODS
    parse_zone(provider.default_timezone)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_records_are_named_as_the_provider_is_registered(name: str) -> None:
    for _, record, external_id in simulated_records(name, make_source(name), range(5)):
        assert f"{record.provider}.{record.event}" == name
        assert record.external_id == external_id


@pytest.mark.parametrize("name", list(REGISTRY))
def test_simulate_reports_the_call_it_is_asked_for(name: str) -> None:
    provider, source = REGISTRY[name], make_source(name)
    callback = provider.simulate(random.Random(7), NOW, source, "call-42")
    assert callback.external_id == "call-42"
    envelope = envelope_of(name, callback)
    provider.authenticate(envelope, callback.headers, source, NOW.timestamp())
    (payload,) = provider.parse(envelope, source)
    assert provider.normalize(payload, source).external_id == "call-42"


@pytest.mark.parametrize("name", [n for n, p in REGISTRY.items() if not p.signing_modes])
def test_an_unsigned_provider_authenticates_any_body(name: str) -> None:
    REGISTRY[name].authenticate(make_envelope(name, "garbage"), {}, make_source(name), 0.0)


@pytest.mark.parametrize("name", list(REGISTRY))
@pytest.mark.parametrize("outcome", list(Outcome))
def test_every_outcome_is_answered_with_its_status(name: str, outcome: Outcome) -> None:
    answer = REGISTRY[name].answer(outcome)
    assert answer.status == HTTP_STATUS[outcome]
    assert answer.content_type
    accepted = REGISTRY[name].answer(Outcome.ACCEPTED)
    assert (answer.body == accepted.body) is (outcome is Outcome.ACCEPTED)
