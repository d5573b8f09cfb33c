"""The log of callbacks answered 404 (an unknown source, or a wrong token): the likeliest
set-up mistake, a URL mistyped at the provider, must leave a trace, but a scan of guessed
URLs must not flood the log. At most one line per source per interval, saying how many were
left out since the line before; every unknown source shares one line, so guessing names
gains a scanner nothing. The token is never logged."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cdrflow.logs import get_logger

log = get_logger("cdrflow.ingress")

INTERVAL_SECONDS = 10.0
UNKNOWN = "-"  # the key every unknown source shares
MAX_SLUG_CHARS = 64  # a slug is whatever the client wrote


@dataclass
class NotFoundLog:
    known_sources: frozenset[str]
    interval: float = INTERVAL_SECONDS
    clock: Callable[[], float] = time.monotonic
    _last: dict[str, float] = field(default_factory=dict)
    _suppressed: dict[str, int] = field(default_factory=dict)

    def refused(self, slug: str, client: str) -> None:
        """A 404 for `slug` from `client`: logged, unless one for the same source was
        logged less than `interval` ago (then only counted)."""
        known = slug in self.known_sources
        key = slug if known else UNKNOWN
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._last[key] = now
        log.warning(
            "callback_not_found",
            source=slug[:MAX_SLUG_CHARS],
            reason="wrong_token" if known else "unknown_source",
            client=client,
            suppressed=self._suppressed.pop(key, 0),
        )
