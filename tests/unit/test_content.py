"""The canonical spelling behind `content_hash`: hashes are stored, so every spelling here
is the one earlier versions gave (fast paths included)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from schemas.content import canonical, canonical_content, content_hash
from schemas.envelope import BACKFILL, PUSH
from schemas.record import CallRecord, CallType, Direction, Status

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


def _record(**changes: Any) -> CallRecord:
    fields: dict[str, Any] = {"extra": {"x": "15.0", "sign": "zz"}, **changes}
    return CallRecord(
        "nx-dr",
        "acme",
        "nxcloud",
        "voice_dr",
        "fixed-1",
        raw={"a": 1},
        status=Status.ANSWERED,
        call_type=CallType.NOTIFICATION,
        direction=Direction.OUTBOUND,
        caller="8613800000000",
        callee="+6281234",
        started_at=datetime(2026, 1, 1, 2, 3, 4, tzinfo=UTC),
        talk_seconds=13,
        billed_seconds=20,
        rate=Decimal("0.01350"),
        cost=Decimal("0.0045"),
        labels=("a", "b"),
        **fields,
    )


def test_a_push_hashes_as_it_did_before_records_had_an_origin() -> None:
    # Computed before `origin` existed: every stored hash of a push must stay valid.
    before = "8e07ab973d45290f7e7ed91b93312e166f9138d2f028e16f971243b99a0c7e86"
    assert content_hash(_record(), frozenset({"sign"})).hex() == before
    assert content_hash(_record(origin=PUSH), frozenset({"sign"})).hex() == before
    assert "origin" not in canonical_content(_record(), frozenset())


def test_a_backfill_is_other_content_than_a_push_with_equal_fields() -> None:
    pushed, backfilled = _record(), _record(origin=BACKFILL)
    assert canonical_content(backfilled, frozenset())["origin"] == "backfill"
    assert content_hash(pushed, frozenset()) != content_hash(backfilled, frozenset())
    again = _record(origin=BACKFILL, extra={"x": "15", "sign": "other"})
    assert content_hash(again, frozenset({"sign"})) == content_hash(backfilled, frozenset({"sign"}))
