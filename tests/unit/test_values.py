"""Integer and money readings, the shortcuts' edges included."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from schemas.providers.values import to_decimal, to_int


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("486", 486),
        (" 42 ", 42),
        ("007", 7),
        ("9" * 19, int("9" * 19)),
        ("9" * 20, None),
        ("-5", -5),
        ("+5", 5),
        ("", None),
        ("²", None),  # a digit to str.isdigit, not to the pattern
        ("١٢", None),
        ("１２", None),
        ("1.0", None),
    ],
)
def test_to_int(text: str, number: int | None) -> None:
    assert to_int(text) == number


@pytest.mark.parametrize(
    ("value", "amount"),
    [
        ("0.0135", Decimal("0.0135")),
        (" 0.50 ", Decimal("0.50")),
        ("1" * 24, Decimal("1" * 24)),
        ("0." + "1" * 39, Decimal("0." + "1" * 39)),
        ("0." + "1" * 40, Decimal("0." + "1" * 40)),  # 40 digits, in 42 characters
        ("0." + "1" * 41, None),  # more than 40 digits: no amount of money
        ("1e25", None),
        ("NaN", None),
        ("x", None),
        (Decimal("0." + "1" * 41), None),
        (5, Decimal(5)),
    ],
)
def test_to_decimal(value: Any, amount: Decimal | None) -> None:
    result = to_decimal(value)
    assert repr(result) == repr(amount)
