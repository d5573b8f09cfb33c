"""The collector's young threshold is raised; the older generations keep theirs."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from cdrflow.gc_tuning import YOUNG_GC_THRESHOLD, tune_gc


@pytest.fixture
def python_defaults() -> Iterator[None]:
    before = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    yield
    gc.set_threshold(*before)


@pytest.mark.usefixtures("python_defaults")
def test_tune_gc_raises_only_the_young_threshold() -> None:
    tune_gc()
    assert gc.get_threshold() == (YOUNG_GC_THRESHOLD, 10, 10)
