"""The 404 log: one line per source per interval, with how many were left out, and every
unknown source sharing one line."""

from __future__ import annotations

import io

from ingress.not_found import NotFoundLog
from schemas.jsoncodec import loads


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [loads(line) for line in stream.getvalue().splitlines()]


def test_one_line_per_source_per_interval_then_the_count_left_out(
    log_output: io.StringIO,
) -> None:
    stream = log_output
    clock = Clock()
    not_found = NotFoundLog(frozenset({"nx-cc"}), interval=10, clock=clock)
    for _ in range(5):
        not_found.refused("nx-cc", "10.0.0.1")
    for slug in ("a", "b", "c"):
        not_found.refused(slug, "10.0.0.2")
    clock.now += 9.9
    not_found.refused("nx-cc", "10.0.0.1")
    assert [(line["source"], line["suppressed"]) for line in lines(stream)] == [
        ("nx-cc", 0),
        ("a", 0),
    ]
    clock.now += 0.1
    not_found.refused("nx-cc", "10.0.0.3")
    not_found.refused("d" * 500, "10.0.0.4")
    last_two = lines(stream)[-2:]
    assert [
        (line["source"], line["reason"], line["client"], line["suppressed"]) for line in last_two
    ] == [
        ("nx-cc", "wrong_token", "10.0.0.3", 5),
        ("d" * 64, "unknown_source", "10.0.0.4", 2),
    ]
