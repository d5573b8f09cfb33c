"""A bound on the body bytes the ingress holds: bodies being read, and bodies waiting until
their envelope is durable. Past `max_inflight_bytes` a request is answered 503 at once
(`Overloaded`) instead of being held: a flood of large or slow bodies then costs a bounded
amount of memory, and the ingress stays up for everyone else."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Gauge


class Overloaded(Exception):
    """Holding these bytes would pass the in-flight bound."""


class InflightBytes:
    def __init__(self, limit: int, gauge: Gauge) -> None:
        self.limit = limit
        self.held = 0
        self._gauge = gauge

    def has_room_for(self, size: int) -> bool:
        return self.held + size <= self.limit

    @contextmanager
    def hold(self) -> Iterator[Hold]:
        """Bytes taken through the hold are given back when the block ends, however."""
        hold = Hold(self)
        try:
            yield hold
        finally:
            self._change(-hold.size)

    def _change(self, delta: int) -> None:
        self.held += delta
        self._gauge.set(self.held)


class Hold:
    def __init__(self, bound: InflightBytes) -> None:
        self._bound = bound
        self.size = 0

    def take(self, size: int) -> None:
        if not self._bound.has_room_for(size):
            raise Overloaded
        self.size += size
        self._bound._change(size)

    def has_room_for(self, size: int) -> bool:
        return self._bound.has_room_for(size)
