"""`map_rendering.reading` builds one reading of a `{k=v}` rendering alone: it must give
what building every reading (`splits`) and picking one gives, refusals included."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.providers.errors import Reject
from schemas.providers.huawei_aicc_release import DOCUMENTED_FIELDS
from schemas.providers.map_rendering import reading, splits

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
