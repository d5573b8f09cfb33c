"""`sanitize`: what PostgreSQL cannot store is made storable, never lost."""

from __future__ import annotations

from decimal import Decimal

from workers.sanitize import sanitize


def test_sanitize_replaces_nul_everywhere() -> None:
    value = {"a\x00": ["x\x00y", {"k": "\x00"}], "n": 5, "d": Decimal("1.5"), "z": None}
    assert sanitize(value) == {
        "a\ufffd": ["x\ufffdy", {"k": "\ufffd"}],
        "n": 5,
        "d": Decimal("1.5"),
        "z": None,
    }


def test_sanitize_returns_clean_strings_unchanged() -> None:
    text = "no nul here"
    assert sanitize(text) is text
