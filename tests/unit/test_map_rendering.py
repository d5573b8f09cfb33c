"""`map_rendering.reading` builds one reading of a `{k=v}` rendering alone: it must give
what building every reading (`splits`) and picking one gives, refusals included."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from schemas.providers.errors import Reject
from schemas.providers.huawei_aicc_release import DOCUMENTED_FIELDS
from schemas.providers.map_rendering import read, reading, splits

PIECES = [
    "caller",
    "called",
    "callData",
    "x",
    "y",
    "=",
    " =",
    ", ",
    ",",
    " ",
    "\t",
    "{",
    "}",
    "[",
    "]",
    "null",
    "1",
]
TEXTS = [
    "{}",
    "{ }",
    "{a=1, b=null, c=, d=x=y}",
    "{x,y=1, caller=2}",  # the reading of every name cuts before `y`: `x` is no key=value
    "{callData=x, y=1, caller=12, called=13}",
    "{=1}",
    "{garbage}",
    "{a=1",
    "{caller=1, caller=2, called={x=1, y=2}}",
]


def every_reading(text: str) -> list[dict[str, Any]] | str:
    try:
        return list(splits(text, DOCUMENTED_FIELDS))
    except Reject as exc:
        return exc.message


def check(text: str) -> None:
    readings = every_reading(text)
    for index in (-1, 0, 1, 2, 3, 30):
        try:
            got: dict[str, Any] | str = reading(text, DOCUMENTED_FIELDS, index)
        except Reject as exc:
            got = exc.message
        if isinstance(readings, str):
            assert got == readings
        else:
            assert got == readings[index if 0 <= index < len(readings) else 0]


@pytest.mark.parametrize("text", TEXTS)
def test_one_reading_is_the_reading_of_all(text: str) -> None:
    check(text)


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(st.sampled_from(PIECES), max_size=30))
def test_one_reading_is_the_reading_of_all_for_any_rendering(pieces: list[str]) -> None:
    check("{" + "".join(pieces) + "}")


# --- a TreeMap's rendering: the key order tells a value holding `, name=` ----------------------

# The document's example in brief: a TreeMap, its keys sorted.
SORTED = {
    "callData": "order-9",
    "callSerialNo": "1197765398201387012",
    "called": "88880067",
    "caller": "960003",
    "releaseReason": "0",
    "talkDuration": "12",
}


def rendered(fields: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{key}={value}" for key, value in fields.items()) + "}"


@pytest.mark.parametrize("value", ["x, name=bob", "x, y=1, z=2", "a, callData=b", "x, agentId=7"])
def test_a_sorted_body_keeps_a_value_holding_a_name_out_of_order_whole(value: str) -> None:
    fields = {**SORTED, "callData": value}
    assert read(rendered(fields), DOCUMENTED_FIELDS) == fields


def test_a_sorted_body_keeps_its_undocumented_fields_that_are_in_order() -> None:
    fields = {"agentId": "7", **SORTED, "zone": "east"}
    assert read(rendered(fields), DOCUMENTED_FIELDS) == fields


def test_a_documented_name_met_twice_is_the_one_in_order() -> None:
    # The real `caller` comes before `recordfile`, whose value holds `, caller=`: in a
    # sorted body the field is the one in order, not the last one met.
    fields = {**SORTED, "recordfile": "Y:/a, caller=9"}
    fields = dict(sorted(fields.items()))
    assert read(rendered(fields), DOCUMENTED_FIELDS) == fields


def test_a_name_that_sorts_where_a_field_could_be_is_a_field() -> None:
    # `callDb` sorts between callData and callSerialNo: the body cannot tell it from a field.
    text = rendered({**SORTED, "callData": "x, callDb=9"})
    assert read(text, DOCUMENTED_FIELDS)["callDb"] == "9"


@pytest.mark.parametrize(
    "fields",
    [
        # callSerialNo before callData: not sorted, so `y` stays a field of its own.
        {"callSerialNo": "5", "callData": "x", "y": "1", "caller": "2"},
        # Two keys no value can fake are sorted by chance too often to tell.
        {"callData": "x", "y": "1", "callSerialNo": "5"},
    ],
)
def test_a_body_that_does_not_show_sorted_keys_keeps_the_anchored_reading(
    fields: dict[str, str],
) -> None:
    assert read(rendered(fields), DOCUMENTED_FIELDS) == fields


NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True)


@settings(max_examples=300, deadline=None, database=None)
@given(NAMES, st.sampled_from(sorted(SORTED)))
def test_any_name_out_of_order_inside_a_sorted_body_stays_in_its_value(
    name: str, holder: str
) -> None:
    keys = sorted(SORTED)
    after = keys[keys.index(holder) + 1] if holder != keys[-1] else None
    assume(name not in DOCUMENTED_FIELDS)
    assume(not (holder < name and (after is None or name < after)))  # in order: a field
    fields = {**SORTED, holder: f"x, {name}=1"}
    assert read(rendered(fields), DOCUMENTED_FIELDS) == fields
    check(rendered(fields))
