"""Progress of a long command: a live bar on a terminal (tqdm: rate, ETA, terminal width);
elsewhere, where nobody watches a bar (a pod's log, a pipe), a log line every few seconds
and one at the end."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from tqdm import tqdm

from cdrflow.logs import get_logger

LOG_EVERY_SECONDS = 5.0

log = get_logger("cdrflow.progress")


class Progress:
    def __init__(
        self,
        total: int | None,
        *,
        unit: str,
        event: str,
        stream: TextIO | None = None,
        log_every: float = LOG_EVERY_SECONDS,
    ) -> None:
        """`event`: the name of the log lines written when not on a terminal."""
        stream = stream or sys.stderr
        self.total = total
        self.done = 0
        self.event = event
        self.log_every = log_every
        self.fields: dict[str, object] = {}
        self._started = self._logged_at = time.monotonic()
        self._bar: tqdm[Any] | None = None
        if stream.isatty():
            self._bar = tqdm(total=total, unit=unit, file=stream, dynamic_ncols=True)

    def expect(self, total: int) -> None:
        """The total, once known."""
        self.total = total
        if self._bar is not None:
            self._bar.total = total
            self._bar.refresh()

    def update(self, count: int = 1, **fields: object) -> None:
        """`count` more done; `fields` (such as answers by status) shown beside the count."""
        self.done += count
        self.fields.update(fields)
        if self._bar is not None:
            if fields:
                self._bar.set_postfix(self.fields, refresh=False)
            self._bar.update(count)
        elif time.monotonic() - self._logged_at >= self.log_every:
            self._logged_at = time.monotonic()
            self._log()

    @property
    def rate(self) -> float:
        elapsed = time.monotonic() - self._started
        return self.done / elapsed if elapsed > 0 else 0.0

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.done:
            self._log()

    def _log(self) -> None:
        log.info(
            self.event,
            done=self.done,
            total=self.total,
            per_second=round(self.rate, 1),
            **self.fields,
        )
