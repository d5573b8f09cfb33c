"""The HTTP side of a provider's books: one page at a time, never faster than the provider
allows across every cdrflow process, retried with backoff and jitter.

Every try, the first and each retry, takes its own turn of the account's shared rate limit
(`ledger.reserve_turn`): a provider that counts refused requests too is never sent more
than its limit. A transport error, an HTTP error and a provider's error code are all
retried, up to `ATTEMPTS` tries; then the provider's own message is what the window's run
keeps as its error."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp
import asyncpg
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from cdrflow.backoff import sleep_unless
from cdrflow.logs import get_logger
from reconciler.tables import reserve_turn
from schemas.providers.books import Books, BooksPage, BooksRefused, BooksRequest

log = get_logger("cdrflow.reconcile")

ATTEMPTS = 4
FIRST_WAIT = 0.5  # seconds: the bound of the first wait between tries; it doubles
MAX_WAIT = 8.0
REQUEST_TIMEOUT = 30.0
USER_AGENT = "cdrflow-reconcile"


class Stopped(Exception):
    """SIGTERM came while the pass waited for its turn or between tries."""


class BooksUnavailable(Exception):
    """The provider's books could not be listed, after every try: the last error."""


@dataclass(frozen=True, slots=True)
class Account:
    key: str  # who the provider counts requests against (`BooksConfig.account`)
    spacing: float  # seconds between two requests: 1 / requests_per_second


class BooksClient:
    def __init__(
        self, session: aiohttp.ClientSession, pool: asyncpg.Pool, stopping: asyncio.Event
    ) -> None:
        self.session = session
        self.pool = pool
        self.stopping = stopping
        self.requests = 0

    async def page(self, books: Books, account: Account, request: BooksRequest) -> BooksPage:
        """One page of the books, tried up to `ATTEMPTS` times; raises `BooksUnavailable`
        with the last error, or `Stopped`."""
        retrying = AsyncRetrying(
            retry=retry_if_exception_type((BooksRefused, aiohttp.ClientError, TimeoutError)),
            wait=wait_random_exponential(multiplier=FIRST_WAIT, max=MAX_WAIT),
            stop=stop_after_attempt(ATTEMPTS),
            sleep=self._sleep,
            before_sleep=_log_retry,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._try(books, account, request)
        except (BooksRefused, aiohttp.ClientError, TimeoutError) as exc:
            raise BooksUnavailable(_describe(exc)) from exc
        raise AssertionError("unreachable: tenacity returns or raises")

    async def _try(self, books: Books, account: Account, request: BooksRequest) -> BooksPage:
        await self._take_turn(account)
        self.requests += 1
        async with self.session.post(
            request.url,
            data=dict(request.form),
            headers={"User-Agent": USER_AGENT},
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
        ) as response:
            body = await response.read()
            if response.status != 200:
                raise BooksRefused(f"HTTP {response.status}", body[:200].decode(errors="replace"))
        return books.read_answer(body)

    async def _take_turn(self, account: Account) -> None:
        if self.stopping.is_set():
            raise Stopped
        async with self.pool.acquire() as connection:
            wait = await reserve_turn(connection, account.key, account.spacing)
        await sleep_unless(self.stopping, wait)
        if self.stopping.is_set():
            raise Stopped

    async def _sleep(self, seconds: float) -> None:
        await sleep_unless(self.stopping, seconds)
        if self.stopping.is_set():
            raise Stopped


def _describe(error: BaseException) -> str:
    if isinstance(error, BooksRefused):
        return str(error)
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _log_retry(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome is not None else None
    log.warning(
        "reconcile_request_failed",
        attempt=state.attempt_number,
        retry_in=round(state.upcoming_sleep, 2),
        error=_describe(error) if error is not None else "",
    )
