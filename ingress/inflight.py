"""A bound on the body bytes the ingress holds: bodies being read, and bodies waiting until
their envelope is durable. Past `max_inflight_bytes` a request is answered 503 at once
(`Overloaded`) instead of being held: a flood of large or slow bodies then costs a bounded
amount of memory, and the ingress stays up for everyone else."""

from __future__ import annotations

from types import TracebackType

from prometheus_client import Gauge


class Overloaded(Exception):
    """Holding these bytes would pass the in-flight bound."""


class InflightBytes:
    def __init__(self, limit: int, gauge: Gauge) -> None:
        self.limit = limit
        self.held = 0
        # Read when scraped: setting a gauge (and its lock) twice per request costs more.
        gauge.set_function(lambda: self.held)

    def has_room_for(self, size: int) -> bool:
        return self.held + size <= self.limit

    def hold(self) -> Hold:
        """Bytes taken through the hold are given back when its `with` block ends, however."""
        return Hold(self)


class Hold:
    # A class rather than @contextmanager: a generator per request costs more.
    __slots__ = ("_bound", "size")

    def __init__(self, bound: InflightBytes) -> None:
        self._bound = bound
        self.size = 0

    def __enter__(self) -> Hold:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._bound.held -= self.size
        self.size = 0

    def take(self, size: int) -> None:
        if not self._bound.has_room_for(size):
            raise Overloaded
        self.size += size
        self._bound.held += size

    def has_room_for(self, size: int) -> bool:
        return self._bound.has_room_for(size)
