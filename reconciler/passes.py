"""One reconciliation pass over one source: its windows listed page by page, each page
compared with `call_records` and its missing records backfilled before the next page is
asked for (what was listed is backfilled even when a later request fails).

Windows: without bounds, the source's lookback up to now minus its settle time, in spans
the provider accepts, plus every earlier window a pass failed to list whole; with bounds,
those bounds as they are. A window (or its part) older than the provider keeps is reported
`beyond_horizon` and not asked for: the provider would answer nothing or an error, which
is not "no records"."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiormq
import asyncpg

from cdrflow.amqp import BrokerLink, BrokerUnavailable, raw_message
from cdrflow.logs import get_logger
from cdrflow.settings import Settings
from reconciler import tables
from reconciler.books_client import Account, BooksClient, BooksUnavailable, Stopped
from reconciler.compare import Difference, differences
from reconciler.reconciler_metrics import ReconcileMetrics
from schemas.envelope import BACKFILL, RawEnvelope, uuid7
from schemas.providers import Provider, Reject
from schemas.providers.books import Backfill, Books, ReconcileSettings, Window, windows
from schemas.record import CallRecord
from schemas.sources import Source

log = get_logger("cdrflow.reconcile")

ENVELOPES_PER_MESSAGE = 100
# A window must start this much inside the provider's horizon: the provider judges its age
# by its own clock, a little later than ours, and a long pass takes time.
HORIZON_MARGIN = timedelta(minutes=10)
LOCK_POLL_SECONDS = 2.0
# The provider's interval between two requests, stretched by 5% (50 ms at one a second):
# between the reservation of a turn and the request's arrival at the provider lie a
# scheduler and a network, which may bring one request a little late and the next on time.
SPACING_MARGIN = 1.05


class BackfillFailed(Exception):
    """RabbitMQ did not confirm a backfill: the window stays due."""


@dataclass
class WindowOutcome:
    source: str
    window: Window
    status: str = tables.RUNNING
    counts: tables.WindowCounts = field(default_factory=tables.WindowCounts)
    error: str | None = None
    would_backfill: list[str] = field(default_factory=list)  # a dry run's


def plan(
    reconcile: ReconcileSettings,
    books: Books,
    now: datetime,
    since: datetime | None,
    until: datetime | None,
    still_due: Sequence[Window] = (),
) -> list[Window]:
    """The windows of one pass, oldest first (see the module's doc)."""
    if since is not None or until is not None:
        start = since or (until or now) - reconcile.lookback
        return windows(start, until or now - reconcile.settle, books.max_span)
    return sorted(
        {*still_due, *windows(now - reconcile.lookback, now - reconcile.settle, books.max_span)},
        key=lambda window: (window.start, window.end),
    )


def split_at_horizon(window: Window, oldest: datetime) -> tuple[Window | None, Window | None]:
    """(the part older than `oldest`, the part the provider still keeps)."""
    if window.end <= oldest:
        return window, None
    if window.start >= oldest:
        return None, window
    edge = oldest.replace(microsecond=0) + timedelta(seconds=1)
    return Window(window.start, edge), Window(edge, window.end)


class SourcePass:
    """A pass over one source, with what every window of it shares."""

    def __init__(
        self,
        settings: Settings,
        source: Source,
        provider: Provider,
        pool: asyncpg.Pool,
        client: BooksClient,
        link: BrokerLink | None,
        metrics: ReconcileMetrics,
        *,
        dry_run: bool = False,
        on_rows: Callable[[int], None] = lambda _count: None,
    ) -> None:
        assert source.reconcile is not None
        assert provider.books is not None
        self.settings = settings
        self.source = source
        self.reconcile: ReconcileSettings = source.reconcile
        self.provider = provider
        self.books: Books = provider.books
        self.pool = pool
        self.client = client
        self.link = link
        self.metrics = metrics
        self.dry_run = dry_run
        self.on_rows = on_rows
        spacing = SPACING_MARGIN / self.reconcile.requests_per_second
        self.account = Account(self.reconcile.books.account(), spacing)

    async def run(
        self, since: datetime | None = None, until: datetime | None = None
    ) -> list[WindowOutcome]:
        now = datetime.now(UTC)
        due: list[Window] = []
        if since is None and until is None:
            async with self.pool.acquire() as connection:
                due = await tables.windows_still_due(
                    connection, self.source.name, now - self.reconcile.lookback
                )
        oldest = now - self.books.horizon + HORIZON_MARGIN
        outcomes = []
        for window in plan(self.reconcile, self.books, now, since, until, due):
            beyond, within = split_at_horizon(window, oldest)
            if beyond is not None:
                outcomes.append(await self._beyond_horizon(beyond))
            if within is not None:
                outcomes.append(await self._window(within))
        if not self.dry_run and all(o.status != tables.FAILED for o in outcomes):
            self.metrics.succeeded(self.source.name)
        return outcomes

    async def _beyond_horizon(self, window: Window) -> WindowOutcome:
        outcome = WindowOutcome(self.source.name, window, tables.BEYOND_HORIZON)
        outcome.error = f"older than the provider keeps ({self.books.horizon.days} days)"
        async with self.pool.acquire() as connection:
            run_id = await tables.start_run(
                connection, self.source.name, window, dry_run=self.dry_run
            )
            await tables.finish_run(
                connection, run_id, outcome.status, outcome.counts, outcome.error
            )
        log.warning("reconcile_beyond_horizon", source=self.source.name, window=window.label())
        return outcome

    async def _window(self, window: Window) -> WindowOutcome:
        outcome = WindowOutcome(self.source.name, window)
        async with self.pool.acquire() as connection:
            run_id = await tables.start_run(
                connection, self.source.name, window, dry_run=self.dry_run
            )
        stopped = False
        try:
            await self._list(window, outcome)
            outcome.status = tables.OK
        except (BooksUnavailable, BackfillFailed) as exc:
            outcome.status, outcome.error = tables.FAILED, str(exc)
        except Stopped:
            outcome.status, outcome.error = tables.FAILED, "stopped before the window was listed"
            stopped = True
        async with self.pool.acquire() as connection:
            await tables.finish_run(
                connection, run_id, outcome.status, outcome.counts, outcome.error
            )
        log.info(
            "reconcile_window",
            source=self.source.name,
            window=window.label(),
            status=outcome.status,
            provider_records=outcome.counts.provider_records,
            stored=outcome.counts.stored,
            backfilled=outcome.counts.backfilled,
            discrepancies=outcome.counts.discrepancies,
            error=outcome.error,
        )
        if stopped:
            raise Stopped
        return outcome

    async def _list(self, window: Window, outcome: WindowOutcome) -> None:
        for kind in self.reconcile.books.kinds():
            page, listed = 1, 0
            # A row the provider moves across a page boundary while the pages are read (a
            # call listed meanwhile) comes twice: the previous page's ids are enough to
            # count it once, and keep a day of 100,000 ids out of memory.
            previous: set[str] = set()
            while True:
                request = self.books.request(
                    self.reconcile.books,
                    self.reconcile.url,
                    kind,
                    window,
                    page,
                    self.reconcile.page_size,
                    self.source.timezone,
                )
                answer = await self.client.page(self.books, self.account, request)
                listed += len(answer.rows)
                previous = await self._take(answer.rows, kind, previous, outcome)
                self.on_rows(len(answer.rows))
                if not answer.rows or listed >= answer.total:
                    break
                page += 1

    async def _take(
        self,
        rows: Sequence[Mapping[str, Any]],
        kind: str,
        previous: set[str],
        outcome: WindowOutcome,
    ) -> set[str]:
        """Compare one page with what is stored; backfill what is not. Returns its ids."""
        listed: dict[str, Backfill] = {}
        for row in rows:
            external_id = self.books.external_id(row)
            if not external_id:
                log.warning("reconcile_row_without_id", source=self.source.name)
            elif external_id not in previous:
                listed[external_id] = self.books.backfill(row, kind, self.source.timezone)
        counts = outcome.counts
        counts.provider_records += len(listed)
        async with self.pool.acquire() as connection:
            stored = await tables.stored_records(connection, self.source.name, listed)
            found = self._compare(stored, listed)
            counts.stored += len(stored)
            counts.discrepancies += len(found)
            if not self.dry_run:
                fresh = await tables.keep_discrepancies(connection, self.source.name, stored, found)
                for field_name in fresh:
                    self.metrics.discrepancies.labels(self.source.name, field_name).inc()
        missing = [listed[external_id] for external_id in listed if external_id not in stored]
        if self.dry_run:
            outcome.would_backfill.extend(backfill.external_id for backfill in missing)
        else:
            self.metrics.provider_records.labels(self.source.name).inc(len(listed))
            await self._send(missing)
            counts.backfilled += len(missing)
            self.metrics.backfilled.labels(self.source.name).inc(len(missing))
        return set(listed)

    def _compare(
        self, stored: Mapping[str, Any], listed: Mapping[str, Backfill]
    ) -> list[tuple[str, uuid.UUID, Difference]]:
        found = []
        for external_id, ours in stored.items():
            theirs = self._record(listed[external_id])
            if theirs is not None:
                for difference in differences(ours, theirs):
                    found.append((external_id, ours["record_id"], difference))
        return found

    def _record(self, backfill: Backfill) -> CallRecord | None:
        """The provider's row as its own normalizer reads the callback made of it."""
        try:
            payloads = self.provider.parse(self.envelope(backfill), self.source)
            return self.provider.normalize(payloads[0], self.source)
        except Reject as exc:
            log.warning(
                "reconcile_row_unreadable",
                source=self.source.name,
                external_id=backfill.external_id,
                reason=exc.reason.value,
            )
            return None

    def envelope(self, backfill: Backfill) -> RawEnvelope:
        return RawEnvelope(
            ingest_id=uuid7(),
            source=self.source.name,
            tenant=self.source.tenant,
            provider=self.source.provider,
            received_at=datetime.now(UTC),
            method=backfill.method,
            path=f"/v1/callbacks/{self.source.name}",
            query="",
            content_type=backfill.content_type,
            body=backfill.body,
            headers={"content-type": backfill.content_type, "user-agent": "cdrflow-reconcile"},
            origin=BACKFILL,
        )

    async def _send(self, missing: Sequence[Backfill]) -> None:
        if not missing:
            return
        if self.link is None:
            raise BackfillFailed("no link to RabbitMQ")
        for start in range(0, len(missing), ENVELOPES_PER_MESSAGE):
            chunk = missing[start : start + ENVELOPES_PER_MESSAGE]
            message = raw_message([self.envelope(backfill).encode() for backfill in chunk])
            try:
                await self.link.publish(
                    message,
                    self.settings.raw_queue,
                    mandatory=True,
                    timeout=self.settings.confirm_timeout,
                )
            except (BrokerUnavailable, aiormq.exceptions.AMQPError, TimeoutError) as exc:
                raise BackfillFailed(f"RabbitMQ did not confirm a backfill: {exc!r}") from exc


async def lock_source(
    connection: tables.Connection, source: str, stopping: asyncio.Event, *, wait: bool
) -> bool:
    """Take the source's pass lock; with `wait`, wait for another process's pass to end."""
    while not await tables.try_lock_source(connection, source):
        if not wait or stopping.is_set():
            return False
        log.info("reconcile_source_busy", source=source)
        try:
            await asyncio.wait_for(stopping.wait(), LOCK_POLL_SECONDS)
        except TimeoutError:
            continue
    return True
