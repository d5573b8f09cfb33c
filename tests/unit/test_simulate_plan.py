"""`cdrflow simulate --count N` sends N requests: its re-pushes and malformed bodies are
part of the N, so `--rate` (requests paced by their index) is what reaches the ingress."""

from __future__ import annotations

import itertools
import random

import pytest

from cdrflow.operations.simulator import plan
from schemas.providers import default_registry
from tests.support.sources import load_test_sources


@pytest.mark.parametrize("count", [1, 7, 500])
def test_the_plan_holds_exactly_count_requests_repushes_and_bad_bodies_included(
    count: int,
) -> None:
    sources = [s for s in load_test_sources().values() if s.token]
    pushes = list(
        plan(sources, default_registry(), random.Random(5), count=count, repush=0.5, bad=0.2)
    )
    assert len(pushes) == count
    if count == 500:
        assert 50 < sum(p.repush for p in pushes) < 400
        assert 0 < sum(p.bad and not p.repush for p in pushes) < 200


def test_a_repush_is_the_callback_before_it_sent_again_to_the_same_source() -> None:
    sources = [s for s in load_test_sources().values() if s.token]
    pushes = list(
        plan(sources, default_registry(), random.Random(9), count=300, repush=0.5, bad=0.0)
    )
    assert not pushes[0].repush
    for before, push in itertools.pairwise(pushes):
        if push.repush:
            assert (push.source, push.callback) == (before.source, before.callback)
