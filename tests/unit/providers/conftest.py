"""Shared builders for the provider adapter tests: sources, envelopes, times.

Plain functions (imported by the test modules with `from .conftest import ...`): every test
builds exactly what it needs, and nothing here does I/O."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from schemas.envelope import RawEnvelope
from schemas.providers import HTTP_STATUS, Outcome, Provider, SimulatedCallback, default_registry
from schemas.record import CallRecord
from schemas.sources import Source
from schemas.sources_file import parse_sources

TOKEN = "tok-0123456789abcdef"
SECRET = "app-secret-for-tests"
RECEIVED_AT = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
# A fixed "now" for simulate() and signature checks: no test reads the clock.
NOW = datetime(2026, 3, 14, 9, 26, 53, 589000, tzinfo=UTC)

REGISTRY = default_registry()


def utc(
    year: int,
    month: int,
    day: int,
    hour: int = 0,
    minute: int = 0,
    second: int = 0,
    microsecond: int = 0,
) -> datetime:
    """An aware UTC datetime: the form every time column takes."""
    return datetime(year, month, day, hour, minute, second, microsecond, tzinfo=UTC)


def provider(name: str) -> Provider:
    return REGISTRY[name]


def make_source(
    provider_name: str,
    *,
    name: str = "src",
    tenant: str | None = None,
    timezone: str | None = None,
    signing: str | None = None,
    secret: str | None = None,
    max_skew_seconds: int | None = None,
) -> Source:
    """A Source as `parse_sources` builds it from a sources file with one entry."""
    entry: dict[str, Any] = {"provider": provider_name, "token": TOKEN}
    if tenant is not None:
        entry["tenant"] = tenant
    if timezone is not None:
        entry["timezone"] = timezone
    if signing is not None:
        entry["signing"] = signing
        if signing != "none":
            entry["secret"] = secret or SECRET
    if max_skew_seconds is not None:
        entry["max_skew_seconds"] = max_skew_seconds
    # JSON string and integer literals are valid TOML literals.
    lines = [f"[sources.{name}]", *(f"{key} = {json.dumps(value)}" for key, value in entry.items())]
    sources = parse_sources("\n".join(lines), origin="test", environ={}, providers=REGISTRY)
    return sources[name]


def make_envelope(
    provider_name: str,
    body: bytes | str = b"",
    *,
    content_type: str = "",
    method: str = "POST",
    query: str = "",
    source: str = "src",
) -> RawEnvelope:
    """A raw envelope as the ingress wraps a request."""
    return RawEnvelope(
        ingest_id=uuid.UUID("01937c5e-0000-7000-8000-000000000001"),
        source=source,
        tenant="default",
        provider=provider_name,
        received_at=RECEIVED_AT,
        method=method,
        path=f"/v1/callbacks/{source}",
        query=query,
        content_type=content_type,
        body=body.encode() if isinstance(body, str) else body,
    )


def exact_json(text: str | bytes) -> Any:
    """JSON as the adapters must read it: fractions as exact Decimals."""
    return json.loads(text, parse_float=Decimal)


def parse_one(
    provider_name: str, envelope: RawEnvelope, source: Source | None = None
) -> dict[str, Any]:
    payloads = provider(provider_name).parse(envelope, source or make_source(provider_name))
    assert len(payloads) == 1
    payload = payloads[0]
    assert isinstance(payload, dict)
    return payload


def record_of(
    provider_name: str,
    body: bytes | str,
    source: Source | None = None,
    *,
    content_type: str = "application/json;charset=UTF-8",
    method: str = "POST",
    query: str = "",
) -> CallRecord:
    """Parse one request and normalize its only payload."""
    src = source or make_source(provider_name)
    envelope = make_envelope(
        provider_name, body, content_type=content_type, method=method, query=query
    )
    return provider(provider_name).normalize(parse_one(provider_name, envelope, src), src)


def assert_every_field_lands(
    payload: Mapping[str, Any], record: CallRecord, column_of: Mapping[str, str]
) -> None:
    """Each field of the payload is in `extra` unchanged, or its column is set."""
    for key in payload:
        if key in record.extra:
            assert record.extra[key] == payload[key]
        else:
            value = getattr(record, column_of[key])
            assert value is not None, key
            assert value != (), key


def envelope_of(provider_name: str, callback: SimulatedCallback) -> RawEnvelope:
    """The envelope the ingress would make of a simulated callback."""
    return make_envelope(
        provider_name,
        callback.body,
        content_type=callback.content_type,
        method=callback.method,
        query=callback.query,
    )


def simulated_records(
    provider_name: str, source: Source, seeds: range
) -> list[tuple[dict[str, Any], CallRecord, str]]:
    """simulate() -> envelope -> parse -> normalize, for each seed: (payload, record, id)."""
    adapter = provider(provider_name)
    out = []
    for seed in seeds:
        callback = adapter.simulate(random.Random(seed), NOW, source)
        envelope = envelope_of(provider_name, callback)
        adapter.authenticate(envelope, callback.headers, source, NOW.timestamp())
        payload = parse_one(provider_name, envelope, source)
        out.append((payload, adapter.normalize(payload, source), callback.external_id))
    return out


@dataclass(frozen=True)
class IngressContract:
    """What a provider's document asks of the ingress, stated in the provider's own test
    module: methods, zone, signing, the fields that change on every push, and answers."""

    methods: frozenset[str]
    signing_modes: frozenset[str]
    volatile_fields: frozenset[str]
    # outcome -> (body, content type)
    answers: Mapping[Outcome, tuple[bytes, str]]
    default_timezone: str = "+08:00"


def assert_ingress_contract(provider_name: str, contract: IngressContract) -> None:
    adapter = provider(provider_name)
    assert adapter.methods == contract.methods
    assert adapter.default_timezone == contract.default_timezone
    assert adapter.signing_modes == contract.signing_modes
    assert adapter.volatile_fields == contract.volatile_fields
    for outcome, (body, content_type) in contract.answers.items():
        answer = adapter.answer(outcome)
        assert (answer.status, answer.body, answer.content_type) == (
            HTTP_STATUS[outcome],
            body,
            content_type,
        ), outcome
