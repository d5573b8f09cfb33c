"""A provider's own books: the record-query API a source can be reconciled with.

A provider module that has documented books offers them as `Provider.books` (None when it
has none): pure parts only, as everything in `schemas/`. How a source's `reconcile` table
is read, the request for one window and page (with the provider's own authentication), the
answer read into rows or refused with the provider's code and message, and a row turned
into the callback the provider would have pushed. The HTTP calls, the rate limit and the
retries are the reconciler's (`reconciler`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, Protocol

from schemas.source_settings import SourceSettings

# What every `[sources.NAME.reconcile]` table may hold besides its books' own keys, with
# the defaults of the SPEC's example.
DEFAULT_LOOKBACK_HOURS = 72
DEFAULT_SETTLE_MINUTES = 30
DEFAULT_INTERVAL_MINUTES = 15
DEFAULT_REQUESTS_PER_SECOND = 1.0
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
COMMON_RECONCILE_KEYS = frozenset(
    {
        "url",
        "lookback_hours",
        "settle_minutes",
        "interval_minutes",
        "requests_per_second",
        "page_size",
    }
)


class BooksRefused(Exception):
    """The provider answered, but not with rows: its error code and message (kept in the
    run's error), or an answer that is not what its documents describe."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"provider code {code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Window:
    """A span of time listed in one series of requests: [start, end), whole seconds, UTC."""

    start: datetime
    end: datetime

    def label(self) -> str:
        return f"{_iso(self.start)}..{_iso(self.end)}"


@dataclass(frozen=True, slots=True)
class BooksRequest:
    """One form-encoded POST: the provider's books take nothing else."""

    url: str
    form: Mapping[str, str] = field(repr=False)  # carries the credentials


@dataclass(frozen=True, slots=True)
class BooksPage:
    rows: Sequence[Mapping[str, Any]]
    total: int  # every row of the query, over all its pages


@dataclass(frozen=True, slots=True)
class Backfill:
    """A row as the callback its provider would have pushed: what goes into `cdr.raw`."""

    external_id: str
    method: str
    content_type: str
    body: bytes


class BooksConfig(Protocol):
    """A books' own keys of the `reconcile` table, as `Books.configure` read them."""

    def kinds(self) -> tuple[str, ...]:
        """The separate listings one window needs (NXCloud: one per voice type)."""

    def account(self) -> str:
        """Who the provider counts requests against (never a secret: it is stored)."""

    def secrets(self) -> tuple[str, ...]: ...


class Books(Protocol):
    @property
    def max_span(self) -> timedelta:
        """The longest window one request may cover."""

    @property
    def horizon(self) -> timedelta:
        """How far back the provider keeps records."""

    def configure(self, settings: SourceSettings) -> BooksConfig:
        """Read the books' own keys of the `reconcile` table; raise `settings.fail`."""

    def request(
        self,
        config: BooksConfig,
        url: str,
        kind: str,
        window: Window,
        page: int,
        page_size: int,
        zone: tzinfo,
    ) -> BooksRequest:
        """Page `page` (from 1) of the listing `kind` of `window`, times in `zone`."""

    def read_answer(self, body: bytes) -> BooksPage:
        """The rows of one answer; raise `BooksRefused` for anything else."""

    def external_id(self, row: Mapping[str, Any]) -> str:
        """The row's id as text, as the push carries it; "" when it has none."""

    def backfill(self, row: Mapping[str, Any], kind: str, zone: tzinfo) -> Backfill:
        """The callback the provider would have pushed for this row (of the listing
        `kind`; its zone-less times are in `zone`)."""


@dataclass(frozen=True, slots=True)
class ReconcileSettings:
    """A source's `[sources.NAME.reconcile]` table, read and checked."""

    url: str
    books: BooksConfig
    lookback: timedelta = timedelta(hours=DEFAULT_LOOKBACK_HOURS)
    settle: timedelta = timedelta(minutes=DEFAULT_SETTLE_MINUTES)
    interval: timedelta = timedelta(minutes=DEFAULT_INTERVAL_MINUTES)
    requests_per_second: float = DEFAULT_REQUESTS_PER_SECOND
    page_size: int = DEFAULT_PAGE_SIZE

    def secrets(self) -> tuple[str, ...]:
        return self.books.secrets()


def read_reconcile(settings: SourceSettings, books: Books) -> ReconcileSettings:
    """The `reconcile` table of a source whose provider has `books`."""
    url = settings.string("url", required=True) or ""
    if not url.startswith(("http://", "https://")):
        raise settings.fail("url", "must start with http:// or https://")
    lookback = _number(settings, "lookback_hours", DEFAULT_LOOKBACK_HOURS, low=1)
    if timedelta(hours=lookback) > books.horizon:
        raise settings.fail(
            "lookback_hours", f"the provider keeps {books.horizon.days} days: at most that"
        )
    return ReconcileSettings(
        url=url,
        books=books.configure(settings),
        lookback=timedelta(hours=lookback),
        settle=timedelta(minutes=_number(settings, "settle_minutes", DEFAULT_SETTLE_MINUTES)),
        interval=timedelta(
            minutes=_number(settings, "interval_minutes", DEFAULT_INTERVAL_MINUTES, low=1)
        ),
        requests_per_second=_number(
            settings, "requests_per_second", DEFAULT_REQUESTS_PER_SECOND, low=0.001, whole=False
        ),
        page_size=int(_number(settings, "page_size", DEFAULT_PAGE_SIZE, low=1, high=MAX_PAGE_SIZE)),
    )


def _number(
    settings: SourceSettings,
    key: str,
    default: float,
    *,
    low: float = 0,
    high: float | None = None,
    whole: bool = True,
) -> float:
    value: Any = settings.value(key, default)
    if isinstance(value, bool) or not isinstance(value, int if whole else int | float):
        raise settings.fail(key, "must be a whole number" if whole else "must be a number")
    if value < low or (high is not None and value > high):
        bound = f"{low} to {high}" if high is not None else f"at least {low}"
        raise settings.fail(key, f"must be {bound} (got {value})")
    return float(value)


def windows(start: datetime, end: datetime, span: timedelta) -> list[Window]:
    """[start, end) cut into windows of at most `span`, on whole seconds."""
    start, end = _whole_second(start), _whole_second(end)
    cut = []
    while start < end:
        stop = min(start + span, end)
        cut.append(Window(start, stop))
        start = stop
    return cut


def _whole_second(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("a window's bounds need a time zone")
    return moment.astimezone(UTC).replace(microsecond=0)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
