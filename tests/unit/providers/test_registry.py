"""What every registered provider must agree on with the rest of cdrflow: the record
schema's `provider` and `event` enums, its own name, `simulate()` round trips, and its
contract with the ingress (methods, zone, signing, answers), stated once per provider."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import pytest

from schemas.providers import HTTP_STATUS, Outcome, default_registry

from .conftest import NOW, envelope_of, make_envelope, make_source, simulated_records

SCHEMA = Path(__file__).resolve().parents[3] / "schemas" / "call_record.schema.json"
REGISTRY = default_registry()


@dataclass(frozen=True)
class IngressContract:
    methods: frozenset[str]
    signing_modes: frozenset[str]
    volatile_fields: frozenset[str]
    # (outcome, HTTP status, body, content type): the answers the provider's document asks for
    answers: tuple[tuple[Outcome, int, bytes, str], ...]
    default_timezone: str = "+08:00"
    # a body an unsigned provider's `authenticate` lets through unread
    unsigned_body: str = "garbage"


_TEXT = "text/plain"
_JSON = "application/json"
CONTRACTS = {
    "huawei.aicc_release": IngressContract(
        methods=frozenset({"POST"}),
        signing_modes=frozenset({"sha256", "hmac-sha256"}),
        volatile_fields=frozenset({"timestamp", "nonce", "signature"}),
        answers=((Outcome.ACCEPTED, 200, b'{"retCode":"0","retMsg":"success"}', _JSON),),
    ),
    "nxcloud.call_center_report": IngressContract(
        methods=frozenset({"POST"}),
        signing_modes=frozenset(),
        volatile_fields=frozenset(),
        answers=(
            (Outcome.ACCEPTED, 200, b"success", _TEXT),
            (Outcome.UNAVAILABLE, 503, b"error", _TEXT),
            (Outcome.TIMEOUT, 408, b"error", _TEXT),
        ),
        unsigned_body="anything",
    ),
    "nxcloud.voice_dr": IngressContract(
        methods=frozenset({"POST", "GET"}),
        signing_modes=frozenset(),
        volatile_fields=frozenset(),
        answers=(
            (Outcome.ACCEPTED, 200, b"success", _TEXT),
            (Outcome.UNAVAILABLE, 503, b"error", _TEXT),
            (Outcome.UNAUTHORIZED, 401, b"error", _TEXT),
        ),
        unsigned_body="x=1",
    ),
    "nxcloud.voice_report": IngressContract(
        methods=frozenset({"POST"}),
        signing_modes=frozenset(),
        volatile_fields=frozenset(),
        answers=(
            (Outcome.ACCEPTED, 200, b"success", _TEXT),
            (Outcome.UNAVAILABLE, 503, b"error", _TEXT),
            (Outcome.TOO_LARGE, 413, b"error", _TEXT),
        ),
    ),
}
ANSWERS = [(name, *answer) for name, contract in CONTRACTS.items() for answer in contract.answers]


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


def test_every_registered_provider_states_its_ingress_contract() -> None:
    assert set(CONTRACTS) == set(REGISTRY)


@pytest.mark.parametrize("name", sorted(CONTRACTS))
def test_methods_zone_and_signing(name: str) -> None:
    provider, contract = REGISTRY[name], CONTRACTS[name]
    assert provider.methods == contract.methods
    assert provider.default_timezone == contract.default_timezone
    assert provider.signing_modes == contract.signing_modes
    assert provider.volatile_fields == contract.volatile_fields


@pytest.mark.parametrize("name", sorted(n for n, c in CONTRACTS.items() if not c.signing_modes))
def test_an_unsigned_provider_authenticates_any_body(name: str) -> None:
    envelope = make_envelope(name, CONTRACTS[name].unsigned_body)
    REGISTRY[name].authenticate(envelope, {}, make_source(name), 0.0)


@pytest.mark.parametrize(("name", "outcome", "status", "body", "content_type"), ANSWERS)
def test_answer(name: str, outcome: Outcome, status: int, body: bytes, content_type: str) -> None:
    answer = REGISTRY[name].answer(outcome)
    assert (answer.status, answer.body, answer.content_type) == (status, body, content_type)
    assert answer.status == HTTP_STATUS[outcome]
