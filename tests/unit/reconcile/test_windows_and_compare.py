"""Which windows a pass covers, the provider's horizon, and what bills compared."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from reconciler.compare import Difference, differences
from reconciler.passes import plan, split_at_horizon
from schemas.providers.books import ReconcileSettings, Window, windows
from schemas.providers.nxcloud_voice_books import BOOKS, VoiceBooksConfig
from schemas.record import CallRecord, Status

NOW = datetime(2026, 12, 3, 9, 30, 12, 345678, tzinfo=UTC)
SETTINGS = ReconcileSettings(url="http://books.test", books=VoiceBooksConfig("a", "s"))


def test_a_span_is_cut_into_windows_of_at_most_24_hours_on_whole_seconds() -> None:
    cut = windows(NOW - timedelta(hours=50), NOW, timedelta(hours=24))
    assert [w.end - w.start for w in cut] == [
        timedelta(hours=24),
        timedelta(hours=24),
        timedelta(hours=2),
    ]
    assert cut[0].start == datetime(2026, 12, 1, 7, 30, 12, tzinfo=UTC)
    assert all(a.end == b.start for a, b in itertools.pairwise(cut))
    assert windows(NOW, NOW, timedelta(hours=24)) == []


def test_without_bounds_a_pass_covers_the_lookback_minus_settle_and_what_is_still_due() -> None:
    failed = Window(datetime(2026, 11, 28, tzinfo=UTC), datetime(2026, 11, 28, 12, tzinfo=UTC))
    planned = plan(SETTINGS, BOOKS, NOW, None, None, [failed])
    assert planned[0] == failed  # older than the lookback, still due
    assert planned[1].start == datetime(2026, 11, 30, 9, 30, 12, tzinfo=UTC)  # 72 h back
    assert planned[-1].end == datetime(2026, 12, 3, 9, 0, 12, tzinfo=UTC)  # 30 min settle
    assert len(planned) == 4


def test_given_bounds_are_taken_as_they_are() -> None:
    since, until = datetime(2026, 12, 1, 16, tzinfo=UTC), datetime(2026, 12, 1, 17, tzinfo=UTC)
    assert plan(SETTINGS, BOOKS, NOW, since, until) == [Window(since, until)]


def test_a_window_older_than_the_provider_keeps_is_split_off() -> None:
    oldest = NOW - timedelta(days=7)
    window = Window(oldest - timedelta(hours=2), oldest + timedelta(hours=2))
    beyond, within = split_at_horizon(window, oldest)
    assert beyond is not None
    assert within is not None
    assert beyond.start == window.start
    assert within.end == window.end
    assert beyond.end == within.start > oldest
    assert split_at_horizon(window, window.start - timedelta(seconds=1)) == (None, window)
    assert split_at_horizon(window, window.end) == (window, None)


def record(**changes: object) -> CallRecord:
    fields: dict[str, object] = {
        "source": "nx-dr", "tenant": "t", "provider": "nxcloud", "event": "voice_dr",
        "external_id": "m1", "raw": {}, "status": Status.ANSWERED, "talk_seconds": 19,
        "billed_seconds": 20, "rate": Decimal("0.05"), "base_cost": None,
    }  # fmt: skip
    fields.update(changes)
    return CallRecord(**fields)  # type: ignore[arg-type]


STORED = {
    "status": "busy", "talk_seconds": 19, "billed_seconds": 20, "rate": Decimal("0.050"),
    "cost": None, "base_cost": Decimal("0.005"), "record_id": None,
}  # fmt: skip


def test_what_bills_is_compared_where_the_row_states_it() -> None:
    assert differences(STORED, record()) == [Difference("connected", "false", "true")]
    answered = {**STORED, "status": "answered"}
    assert differences(answered, record()) == []  # 0.050 is 0.05; no base price in the row
    assert differences(answered, record(rate=Decimal("0.036"), billed_seconds=60)) == [
        Difference("billed_seconds", "20", "60"),
        Difference("rate", "0.05", "0.036"),
    ]
    assert differences({**answered, "talk_seconds": None}, record()) == [
        Difference("talk_seconds", None, "19")
    ]
