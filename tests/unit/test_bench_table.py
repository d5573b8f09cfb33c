"""The bench's rounds: which round a row shows, and how it lists the others."""

from __future__ import annotations

import pytest

from tools.bench.table import median_round, spread


def test_the_row_shows_the_round_whose_ratio_is_the_median() -> None:
    # 0.74 is the outlier of one slow design-limit run: the row shows 0.53 (the third round).
    assert median_round([0.51, 0.74, 0.53]) == 2
    assert median_round([0.70]) == 0


def test_an_even_count_shows_the_upper_median() -> None:
    assert median_round([0.1, 0.9, 0.3, 0.5]) == 3


def test_no_rounds_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one round"):
        median_round([])


def test_every_rounds_ratio_is_listed_in_run_order() -> None:
    assert spread([0.51, 0.74, 0.53]) == " (rounds 0.51, 0.74, 0.53)"
    assert spread([0.70]) == ""
