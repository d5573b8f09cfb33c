"""The calendar of the time partitions (`workers.storage.partitions`) and the retention settings."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from cdrflow.settings import Settings, SettingsError
from schemas.envelope import uuid7
from workers.storage.partitions import (
    PARTITIONED,
    Granularity,
    KeyKind,
    horizon,
    next_start,
    period_start,
    periods_ahead,
    upper_bound_time,
    uuid7_floor,
    uuid7_time,
)


def test_a_month_starts_the_next_on_its_first_day_whatever_its_length() -> None:
    starts = [datetime(2031, 1, 1, tzinfo=UTC)]
    for _ in range(13):
        starts.append(next_start(Granularity.MONTH, starts[-1]))
    assert [(s.year, s.month, s.day) for s in starts[1:4]] == [
        (2031, 2, 1),
        (2031, 3, 1),
        (2031, 4, 1),
    ]
    assert (starts[12].year, starts[12].month) == (2032, 1)


def test_the_period_of_a_moment_is_its_utc_day_or_month() -> None:
    late = datetime(2031, 1, 31, 23, 59, 59, 999_999, tzinfo=UTC)
    assert period_start(Granularity.DAY, late) == datetime(2031, 1, 31, tzinfo=UTC)
    assert period_start(Granularity.MONTH, late) == datetime(2031, 1, 1, tzinfo=UTC)
    # 01:30 at +08:00 is 17:30 UTC the day before.
    east = datetime.fromisoformat("2031-02-01T01:30:00+08:00")
    assert period_start(Granularity.DAY, east) == datetime(2031, 1, 31, tzinfo=UTC)


def test_the_periods_ahead_cover_the_current_one_and_the_next_without_a_gap() -> None:
    table = PARTITIONED["deliveries"]
    periods = periods_ahead(table, datetime(2031, 1, 30, 12, tzinfo=UTC))
    assert len(periods) == table.ahead + 1
    assert periods[0][0] == datetime(2031, 1, 30, tzinfo=UTC)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(periods))


def test_uuid7_floor_orders_with_the_ingest_ids_of_the_ingress() -> None:
    before = datetime.now(UTC)
    made = uuid7()
    assert uuid7_floor(before - timedelta(milliseconds=1)) < made
    assert made < uuid7_floor(datetime.now(UTC) + timedelta(milliseconds=1))
    moment = datetime(2031, 2, 1, tzinfo=UTC)
    assert uuid7_time(uuid7_floor(moment)) == moment
    just_before = datetime(2031, 1, 31, 23, 59, 59, 999_999, tzinfo=UTC)
    assert uuid7_floor(just_before) < uuid7_floor(moment)


def test_the_end_of_a_partition_is_read_from_its_bound() -> None:
    moment = datetime(2031, 2, 1, tzinfo=UTC)
    bound = f"FOR VALUES FROM (MINVALUE) TO ('{uuid7_floor(moment)}')"
    assert upper_bound_time(KeyKind.UUID7, bound) == moment
    assert upper_bound_time(KeyKind.UUID7, "DEFAULT") is None
    assert upper_bound_time(KeyKind.UUID7, "FOR VALUES FROM (MINVALUE) TO (MAXVALUE)") is None
    text = "FOR VALUES FROM ('2031-01-01 00:00:00+00') TO ('2031-02-01 00:00:00+00')"
    assert upper_bound_time(KeyKind.TIMESTAMP, text) == moment


def test_zero_days_keeps_forever() -> None:
    now = datetime(2031, 3, 10, tzinfo=UTC)
    assert horizon(now, 0) is None
    assert horizon(now, 35) == now - timedelta(days=35)


def test_partition_names_sort_by_time() -> None:
    table = PARTITIONED["deliveries"]
    assert table.partition_name(datetime(2031, 1, 9, tzinfo=UTC)) == "deliveries_p20310109"
    assert (
        PARTITIONED["rejected_callbacks"].partition_name(datetime(2031, 12, 1, tzinfo=UTC))
        == "rejected_callbacks_p203112"
    )
    assert isinstance(uuid7_floor(datetime(2031, 1, 1, tzinfo=UTC)), uuid.UUID)


@pytest.mark.parametrize("variable", ["RECORDS", "ORIGINALS", "REJECTED"])
def test_retention_settings_are_checked(variable: str) -> None:
    name = f"CDRFLOW_RETENTION_{variable}_DAYS"
    assert getattr(Settings.from_env({name: "30"}), f"retention_{variable.lower()}_days") == 30
    assert getattr(Settings.from_env({}), f"retention_{variable.lower()}_days") == 0
    for wrong in ("-1", "36501", "a week"):
        with pytest.raises(SettingsError, match=name):
            Settings.from_env({name: wrong})
