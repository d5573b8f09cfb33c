"""Writing batches through a pool, whatever the database does meanwhile.

- A transient fault (database down, failover, restart) holds the batch and retries it
  with backoff, for as long as it takes, telling the worker through a `DatabaseHold`.
- A fault caused by the content (SQLSTATE class 22, 23 or 54) is isolated by bisection:
  the rows that the database refuses become `store_error` rejections; the rest is stored.

The transaction itself is `workers.storage.transaction.write_batch`."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
from tenacity import RetryCallState

from cdrflow.backoff import is_loud, retry_fields, retrying
from cdrflow.logs import get_logger
from schemas.providers import Reason
from workers.batch import BatchResult, Delivery, Normalized, Rejection
from workers.storage.database import BatchDataError, DatabaseHold, is_data_error, is_transient
from workers.storage.transaction import write_batch

log = get_logger("cdrflow.worker.store")


class Store:
    def __init__(self, pool: asyncpg.Pool, hold: DatabaseHold, *, retry_max_seconds: float) -> None:
        self.pool = pool
        self.hold = hold
        self.retry_max_seconds = retry_max_seconds

    async def write(self, normalized: Normalized) -> BatchResult:
        try:
            return await self._write_retrying(normalized)
        except BatchDataError as exc:
            return await self._isolate(normalized, exc)

    async def _isolate(self, normalized: Normalized, error: BatchDataError) -> BatchResult:
        units: list[Delivery | Rejection] = [*normalized.deliveries, *normalized.rejections]
        if len(units) == 1:
            return await self._refuse(units[0], error)
        half = len(units) // 2
        results = [await self.write(_normalized(part)) for part in (units[:half], units[half:])]
        return BatchResult(
            [e for r in results for e in r.published],
            sum(r.fresh for r in results),
            sum(r.versions for r in results),
            [j for r in results for j in r.rejected],
            sum(r.ignored_backfills for r in results),
        )

    async def _refuse(self, unit: Delivery | Rejection, error: BatchDataError) -> BatchResult:
        """Store the one unit the database refuses as a `store_error` rejection."""
        if isinstance(unit, Rejection):
            raise error  # not even the rejection can be stored: let the message park
        log.error(
            "record_refused_by_database",
            ingest_id=unit.ingest_id,
            item=unit.item,
            error=str(error.__cause__),
        )
        refused = Rejection(
            unit.envelope,
            unit.item,
            Reason.STORE_ERROR,
            f"database refused the record: {error.__cause__}",
        )
        return await self.write(Normalized(rejections=[refused]))

    async def _write_retrying(self, normalized: Normalized) -> BatchResult:
        async for attempt in retrying(
            stop=self.hold.give_up,
            max_wait=self.retry_max_seconds,
            retry_on=is_transient,
            on_retry=self._waiting,
        ):
            with attempt:
                result = await self._write_once(normalized)
        if self.hold.waiting.is_set():
            self.hold.waiting.clear()
            log.info("database_recovered")
        return result

    async def _write_once(self, normalized: Normalized) -> BatchResult:
        try:
            async with self.pool.acquire() as connection:
                return await write_batch(connection, normalized)
        except Exception as exc:
            if is_data_error(exc):
                raise BatchDataError(str(exc)) from exc
            raise

    def _waiting(self, state: RetryCallState) -> None:
        self.hold.waiting.set()
        error = state.outcome.exception() if state.outcome else None
        level = log.warning if is_loud(state) else log.debug
        level(
            "database_unavailable",
            **retry_fields(state),
            hint="run `cdrflow migrate`"
            if isinstance(error, asyncpg.UndefinedTableError)
            else None,
        )


def _normalized(units: Sequence[Delivery | Rejection]) -> Normalized:
    return Normalized(
        deliveries=[u for u in units if isinstance(u, Delivery)],
        rejections=[u for u in units if isinstance(u, Rejection)],
    )
