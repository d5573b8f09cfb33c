"""Property-based tests of every registered provider, through the path a worker takes:
parse, normalize, content hash, the record's JSON forms and the published body.

Properties:
- nothing escapes: every input ends as records or as rejections, never `internal_error`;
- what is stored and published stays a small multiple of the body (numbers never expanded);
- the published body validates against `schemas/call_record.schema.json`;
- the same content in another key order, whitespace or number spelling has the same hash.

Bounded (the "ci" profile: 100 examples a test and provider) so that the unit run stays
fast; `HYPOTHESIS_PROFILE=thorough` runs 1,000. Pure: no broker, no database."""

from __future__ import annotations

import json
import os
import random
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.jsoncodec import loads
from schemas.providers import default_registry
from schemas.record import Ledger, published_body
from tests.support.samples import Sample, envelope, record_validator
from tests.support.sources import load_test_sources, provider_source
from workers.batch import Normalized
from workers.normalize import normalize_envelope

REGISTRY = default_registry()
SOURCES = load_test_sources()
PROVIDERS = sorted(REGISTRY)
T0 = datetime(2026, 1, 1, tzinfo=UTC)
# CI runs the bounded profile; `HYPOTHESIS_PROFILE=thorough` searches ten times longer.
settings.register_profile(
    "ci",
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("thorough", settings.get_profile("ci"), max_examples=1000)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
FUZZ = settings(settings.get_profile(PROFILE))
# 100 examples take 2 to 15 s on a loaded 2-core machine: more room than the 20 s hang bound.
pytestmark = pytest.mark.timeout(120 if PROFILE == "ci" else 1800)
CONTENT_TYPES = [
    "",
    "application/json",
    "application/json;charset=UTF-8",
    "application/x-www-form-urlencoded",
    "application/x-www-form-urlencoded; charset=GBK",
    "multipart/form-data; boundary=xyz",
    "multipart/form-data",
    "text/plain; charset=latin-1",
    "text/plain; charset=no-such",
]
ENCODINGS = ["utf-8", "gbk", "gb18030", "latin-1", "utf-16"]
# Each provider's id: 15 and 15.0 are one number but two ids, so ids are never respelled.
ID_FIELDS = frozenset({"voiceId", "callSessionId", "messageid", "callSerialNo"})


def simulated_payload(provider: str) -> dict[str, Any]:
    """A realistic report of this provider, from its own simulate()."""
    source = SOURCES[provider_source(provider)]
    callback = REGISTRY[provider].simulate(random.Random(1), T0, source)
    item = Sample(source.name, "", callback.method, callback.body, callback.content_type)
    (payload,) = REGISTRY[provider].parse(envelope(item, T0), source)[:1]
    return dict(payload)


NUMBERS = st.one_of(
    st.integers(-(2**70), 2**70),
    st.builds(
        lambda digits, exponent: Decimal(digits).scaleb(exponent),
        st.integers(-(10**12), 10**12),
        st.integers(-30, 30),
    ),
    st.sampled_from(["1e999", "1E-999", "0e-50", "-0", "1.50", "9" * 40]),
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    NUMBERS,
    st.text(max_size=30),
    st.sampled_from(["", "null", "2023-11-17 13:42:33", "2022/02/22,10:04:29:004", "0.0135"]),
)


def json_values() -> st.SearchStrategy[Any]:
    return st.recursive(
        SCALARS,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=8,
    )


def payloads(provider: str, *, keep_id: bool) -> st.SearchStrategy[dict[str, Any]]:
    """A realistic report with arbitrary values in some of its fields and arbitrary extra
    fields. With `keep_id` its id stays, so the examples become records and reach every
    check; without, the id may be anything too."""
    base = simulated_payload(provider)
    kept = ID_FIELDS if keep_id else frozenset()
    names = sorted(set(base) - kept)
    changes = st.dictionaries(
        st.one_of(st.sampled_from(names), st.text(max_size=10)).filter(
            lambda name: name not in kept
        ),
        json_values(),
        max_size=10,
    )
    return changes.map(lambda changed: {**base, **changed})


def render(value: Any, *, reverse: bool = False, indent: str = "", respell: bool = False) -> str:
    """JSON text of `value`: key order, whitespace and number spelling chosen here."""
    if isinstance(value, dict):
        items = list(value.items())[:: -1 if reverse else 1]
        inner = f",{indent}".join(
            f"{json.dumps(str(k))}:{indent}"
            + render(v, reverse=reverse, indent=indent, respell=respell and k not in ID_FIELDS)
            for k, v in items
        )
        return "{" + indent + inner + indent + "}"
    if isinstance(value, list):
        rendered = (render(v, reverse=reverse, indent=indent, respell=respell) for v in value)
        return "[" + ", ".join(rendered) + "]"
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int | Decimal):
        text = str(value)
        if respell and "E" not in text.upper() and len(text) < 30:
            return text + ("e0" if "." in text else ".0")
        return text
    return json.dumps(value)


def run(provider: str, body: bytes, content_type: str, query: str = "") -> Normalized:
    source = provider_source(provider)
    method = "GET" if not body and "GET" in REGISTRY[provider].methods else "POST"
    item = Sample(source, "", method, body, content_type, query)
    return normalize_envelope(envelope(item, T0), SOURCES, REGISTRY)


def expanded_length(value: Any) -> int:
    """Characters of `value` as jsonb writes it back, every number in full."""
    return len(json.dumps(value, default=lambda number: format(number, "f")))


def check(result: Normalized, body: bytes) -> None:
    assert [r.message for r in result.rejections if r.reason == "internal_error"] == []
    for delivery in result.deliveries:
        record = delivery.record
        budget = 8 * len(body) + 4096
        assert expanded_length(record.raw) <= budget
        assert expanded_length(record.extra) <= budget
        published = loads(published_body(record, Ledger(T0, T0, T0, T0, 1, 1)))
        assert expanded_length(published) <= 2 * budget
        record_validator().validate(published)


@pytest.mark.parametrize("provider", PROVIDERS)
@FUZZ
@given(data=st.data())
def test_arbitrary_bytes_never_crash(provider: str, data: st.DataObject) -> None:
    body = data.draw(st.binary(max_size=600))
    content_type = data.draw(st.sampled_from(CONTENT_TYPES))
    check(run(provider, body, content_type), body)


@pytest.mark.parametrize("provider", PROVIDERS)
@FUZZ
@given(data=st.data())
def test_arbitrary_field_values_in_every_body_form_never_crash(
    provider: str, data: st.DataObject
) -> None:
    payload = data.draw(payloads(provider, keep_id=False))
    encoding = data.draw(st.sampled_from(ENCODINGS))
    shape = data.draw(st.sampled_from(["json", "form", "map", "multipart", "array"]))
    text, content_type = _body_of(payload, shape)
    body = text.encode(encoding, errors="replace")
    declared = data.draw(st.booleans())
    if declared and content_type and "boundary" not in content_type:
        content_type += f"; charset={encoding}"
    query = _body_of(payload, "form")[0] if data.draw(st.booleans()) else ""
    check(run(provider, body, content_type, query), body)


def _body_of(payload: dict[str, Any], shape: str) -> tuple[str, str]:
    if shape == "json":
        return render(payload), "application/json"
    if shape == "array":
        return "[" + render(payload) + "," + render(payload, reverse=True) + "]", "application/json"
    flat = {str(k): "null" if v is None else str(v) for k, v in payload.items()}
    if shape == "form":
        return "&".join(f"{quote(k)}={quote(v)}" for k, v in flat.items()), (
            "application/x-www-form-urlencoded"
        )
    if shape == "map":
        return "{" + ", ".join(f"{k}={v}" for k, v in flat.items()) + "}", ""
    parts = "".join(
        f'--b0\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
        for k, v in flat.items()
    )
    return parts + "--b0--\r\n", "multipart/form-data; boundary=b0"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_the_fuzzed_reports_start_from_one_that_is_stored(provider: str) -> None:
    result = run(provider, render(simulated_payload(provider)).encode(), "application/json")
    assert len(result.deliveries) == 1, result.rejections


@pytest.mark.parametrize("provider", PROVIDERS)
@FUZZ
@given(data=st.data())
def test_the_same_content_in_another_spelling_has_the_same_hash(
    provider: str, data: st.DataObject
) -> None:
    payload = data.draw(payloads(provider, keep_id=True))
    plain = render(payload).encode()
    first = run(provider, plain, "application/json")
    respelled = render(payload, reverse=True, indent="\n  ", respell=True).encode()
    again = run(provider, respelled, "application/json")
    assert [r.reason for r in first.rejections] == [r.reason for r in again.rejections]
    assert [d.content_hash for d in first.deliveries] == [d.content_hash for d in again.deliveries]
