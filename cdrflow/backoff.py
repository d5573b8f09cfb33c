"""One backoff policy for every reconnect and retry loop: exponential, with full jitter
(each wait is random between zero and the exponential bound), so that workers cut off
together do not all come back in the same instant. tenacity does the bookkeeping.

A loop retries until its `stop` event is set; the wait between tries is cut short by it."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_random_exponential

FIRST_WAIT = 0.25  # seconds: the bound of the first wait; it doubles with each try
BROKER_WAIT_MAX = 10.0  # seconds: the longest wait between tries to reach RabbitMQ
LOUD_EVERY = 10  # of a run of failed tries, the first and every tenth are warnings


def retrying(
    *,
    stop: asyncio.Event,
    max_wait: float,
    on_retry: Callable[[RetryCallState], None],
    retry_on: Callable[[BaseException], bool] = lambda _: True,
) -> AsyncRetrying:
    """Retry while `retry_on(error)` holds, until `stop` is set; the last error is raised
    once it stops (or at once for an error that is not retried, and for a cancellation)."""
    return AsyncRetrying(
        retry=retry_if_exception(lambda error: isinstance(error, Exception) and retry_on(error)),
        wait=wait_random_exponential(multiplier=FIRST_WAIT, max=max(FIRST_WAIT, max_wait)),
        stop=lambda _: stop.is_set(),
        sleep=functools.partial(sleep_unless, stop),
        before_sleep=on_retry,
        reraise=True,
    )


def is_loud(state: RetryCallState) -> bool:
    """Whether this failed try deserves a warning; the others are logged at debug, so a
    long outage does not flood the logs."""
    return state.attempt_number == 1 or state.attempt_number % LOUD_EVERY == 0


def retry_fields(state: RetryCallState) -> dict[str, object]:
    """What a log line about a failed try says."""
    error = state.outcome.exception() if state.outcome is not None else None
    return {
        "attempt": state.attempt_number,
        "retry_in": round(state.upcoming_sleep, 2),
        "error": f"{type(error).__name__}: {error}",
    }


async def sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
