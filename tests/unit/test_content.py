"""The canonical spelling behind `content_hash`: hashes are stored, so every spelling here
is the one earlier versions gave (fast paths included)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from schemas.content import canonical

PLUS_8 = timezone(timedelta(hours=8))


@pytest.mark.parametrize(
    ("value", "spelling"),
    [
        ("9" * 28, "9" * 28),
        ("9" * 29, "1" + "0" * 29),  # Decimal's 28 digits: rounded, as it always was
        ("007", "007"),
        ("0", "0"),
        ("-0", "0"),
        ("0.0135", "0.0135"),
        ("0.01350", "0.0135"),
        ("1.5e1", "15"),
        ("+1", "+1"),
        ("", ""),
        ("Sales", "Sales"),
        ("2026-01-01T10:00:00+08:00", "2026-01-01T02:00:00Z"),
        ("2026/01/01,10:00:00:5", "2026-01-01T10:00:00.5"),
        ("2026/01/01,10:00:00:070", "2026-01-01T10:00:00.07"),
        ("2026/01/01,10:00:00:000", "2026-01-01T10:00:00"),
        ("2026/01/01,10:00:00", "2026-01-01T10:00:00"),
        ("2026/13/01,10:00:00", "2026/13/01,10:00:00"),  # no moment: kept as sent
        ("0000/01/01,10:00:00", "0000/01/01,10:00:00"),
        (10**18 - 1, "999999999999999999"),
        (10**18, "1000000000000000000"),
        (10**30, "1" + "0" * 30),
        (-15, "-15"),
        (0, "0"),
        (True, True),
        (None, None),
        (datetime(2026, 1, 1, 1, 2, 3, 450000, tzinfo=PLUS_8), "2025-12-31T17:02:03.45Z"),
        (datetime(2026, 1, 1, 1, 2, 3, tzinfo=UTC), "2026-01-01T01:02:03Z"),
        (datetime(2026, 1, 1, 1, 2, 3), "2026-01-01T01:02:03"),
        (datetime(2026, 1, 1, 1, 2, 3, 120), "2026-01-01T01:02:03.00012"),
        ({"a": [15, ("15.0",)]}, {"a": ["15", ["15"]]}),
    ],
)
def test_canonical_spelling(value: Any, spelling: Any) -> None:
    assert canonical(value) == spelling
