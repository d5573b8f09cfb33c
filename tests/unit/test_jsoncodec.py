"""`loads_exact` takes orjson's reading only when it is the standard library's (with the
exact-number hooks): same values, same types (int or Decimal), same errors."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.jsoncodec import MAX_NESTING, JSONError, _loads_with_hooks, loads_exact


def typed(value: Any) -> Any:
    if isinstance(value, dict):
        return [(k, typed(v)) for k, v in value.items()]
    if isinstance(value, list):
        return [typed(v) for v in value]
    return (type(value).__name__, repr(value))


def outcome(read: Any, text: str | bytes) -> Any:
    try:
        return typed(read(text))
    except JSONError as exc:
        return ("error", str(exc))


def same(text: str | bytes) -> None:
    # Texts of at most MAX_NESTING brackets: a deeper one is read by the standard library.
    assert outcome(loads_exact, text) == outcome(_loads_with_hooks, text)


NUMBERS = [
    "0", "-0", "-0.0", "1.50", "1e5", "1E-999", "1e999", "17", "-17",
    "99999999999999999", "999999999999999999", "9999999999999999999", "-99999999999999999",
    "-999999999999999999", "18446744073709551615", "18446744073709551616", "1" * 64, "1" * 65,
    "NaN", "-Infinity",
]  # fmt: skip
TEXTS = [
    *NUMBERS,
    *(f'{{"a": {n}, "b": [{n}, {{"c": {n}}}]}}' for n in NUMBERS),
    '"\\ud800"',
    '{"a": "\\udc00x"}',
    '"\\ud83d\\ude00"',
    "\ufeff{}",
    b"\xef\xbb\xbf{}",
    b'{"a": "\xff"}',
    "[1,]",
    '"a\tb"',
    "",
    " [] ",
    "[" * MAX_NESTING + "]" * MAX_NESTING,
    "true",
    "null",
]


@pytest.mark.parametrize("text", TEXTS)
def test_the_same_reading_as_the_standard_library(text: str | bytes) -> None:
    same(text)


def test_a_repeated_key_keeps_its_last_value_and_the_earlier_under_a_suffixed_name() -> None:
    # Where this reading departs from the standard library's, which keeps the last alone.
    assert loads_exact('{"a": 1, "a": 2, "b": 3}') == {"a": 2, "a~1": 1, "b": 3}
    assert loads_exact('{"a": 1.5, "a": 1.5}') == {"a": Decimal("1.5")}  # the same: once


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.decimals(allow_nan=False, allow_infinity=False).map(str).map(Decimal)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=12,
)


def render(value: Any) -> str:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{render(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(render(v) for v in value) + "]"
    return json.dumps(value)


@settings(max_examples=300, deadline=None, database=None)
@given(JSON_VALUES)
def test_the_same_reading_for_any_document(value: Any) -> None:
    same(render(value))


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(st.sampled_from(['{"a":', "[", "]", "}", ",", "1", "1.5", '"\\ud800"', " "])))
def test_the_same_reading_or_error_for_any_text(pieces: list[str]) -> None:
    same("".join(pieces))
