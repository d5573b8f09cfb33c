"""What the console reads from PostgreSQL: each page one or two indexed queries.

Search builds its WHERE clause from the filters given, and only those: a clause such as
`($1 IS NULL OR source = $1)` would keep PostgreSQL from using an index for any of them.
Values are always bound parameters."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from cdrflow.operations.pipeline_status import received_within
from schemas.record import record_id_for

PAGE = 50
STATUSES = ("answered", "no_answer", "busy", "rejected", "cancelled", "failed", "unknown")
LISTED = (
    "record_id, source, external_id, tenant, provider, event, status, caller, callee,"
    " received_at, revision, delivery_count"
)


class SearchError(ValueError):
    """A filter the search cannot use, in words for the page."""


@dataclass(frozen=True)
class Cursor:
    """Where the next page starts: after this (received_at, record_id), newest first."""

    received_at: datetime
    record_id: uuid.UUID

    def encode(self) -> str:
        return f"{self.received_at.isoformat()}_{self.record_id}"

    @classmethod
    def decode(cls, text: str) -> Cursor:
        try:
            moment, record_id = text.rsplit("_", 1)
            return cls(datetime.fromisoformat(moment), uuid.UUID(record_id))
        except ValueError:
            raise SearchError("that page link is broken: search again") from None


@dataclass
class Search:
    source: str = ""
    external_id: str = ""
    number: str = ""
    record_id: str = ""
    since: datetime | None = None
    until: datetime | None = None
    status: str = ""
    after: Cursor | None = None
    known_sources: tuple[str, ...] = field(default=())

    def where(self) -> tuple[list[str], list[Any]]:
        clauses: list[str] = []
        args: list[Any] = []

        def bind(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        if self.record_id:
            clauses.append(f"record_id = {bind(_uuid(self.record_id))}")
        if self.source:
            clauses.append(f"source = {bind(self.source)}")
        if self.external_id:
            # A record's id is the uuid5 of (source, external_id): one probe of the primary
            # key per source, not a scan.
            sources = [self.source] if self.source else list(self.known_sources)
            if sources:
                ids = [record_id_for(source, self.external_id) for source in sources]
                clauses.append(f"record_id = ANY({bind(ids)}::uuid[])")
            clauses.append(f"external_id = {bind(self.external_id)}")
        if self.number:
            clauses.append(_number_clause(self.number, bind))
        if self.status:
            if self.status not in STATUSES:
                raise SearchError(f"status: one of {', '.join(STATUSES)}")
            clauses.append(f"status = {bind(self.status)}")
        if self.since:
            clauses.append(f"received_at >= {bind(self.since)}")
        if self.until:
            clauses.append(f"received_at < {bind(self.until)}")
        if self.after:
            clauses.append(
                f"(received_at, record_id) < ({bind(self.after.received_at)},"
                f" {bind(self.after.record_id)})"
            )
        return clauses, args


def _uuid(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text.strip())
    except ValueError:
        raise SearchError(f"record id {text!r} is not a UUID") from None


def number_prefixes(text: str) -> list[str]:
    """The forms providers send a number in: bare digits, with '+', with '00'."""
    digits = re.sub(r"\D", "", text)
    if len(digits) < 3:
        raise SearchError("number: at least 3 digits of its beginning")
    bare = digits[2:] if digits.startswith("00") else digits
    return [bare, f"+{bare}", f"00{bare}"]


def _after_prefix(prefix: str) -> str:
    """The smallest text greater than every text that starts with `prefix` (digits and
    '+': the last character is never the largest one)."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def _number_clause(text: str, bind: Any) -> str:
    ranges = []
    for prefix in number_prefixes(text):
        low, high = bind(prefix), bind(_after_prefix(prefix))
        for column in ("caller", "callee"):
            ranges.append(f"({column} ~>=~ {low} AND {column} ~<~ {high})")
    return "(" + " OR ".join(ranges) + ")"


async def search(connection: asyncpg.Connection, query: Search) -> list[asyncpg.Record]:
    clauses, args = query.where()
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    sql = (
        f"SELECT {LISTED} FROM call_records {where}"  # noqa: S608 (clauses bind their values)
        f" ORDER BY received_at DESC, record_id DESC LIMIT {PAGE + 1}"
    )
    return list(await connection.fetch(sql, *args))


# `raw` of a record stored from schema 8 on is NULL: its parsed payload is in `originals`.
_RECORD = """
SELECT c.*, (SELECT p.raw FROM record_payloads p WHERE p.record_id = c.record_id) AS payload
FROM call_records c WHERE c.record_id = $1
"""


async def record(connection: asyncpg.Connection, record_id: uuid.UUID) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await connection.fetchrow(_RECORD, record_id)
    return row


async def has_table(connection: asyncpg.Connection, name: str) -> bool:
    return bool(await connection.fetchval("SELECT to_regclass($1) IS NOT NULL", name))


_LAST_HOUR_BY_OUTCOME = f"""
SELECT c.source, c.status AS outcome, count(*) AS callbacks
FROM deliveries d JOIN call_records c ON c.record_id = d.record_id
WHERE {received_within("interval '1 hour'")}
GROUP BY c.source, c.status
UNION ALL
SELECT source, 'rejected callback', count(*) FROM rejected_callbacks
WHERE resolved_at IS NULL AND received_at >= now() - interval '1 hour'
GROUP BY source
"""  # noqa: S608 (a constant condition; no value in it)
_STORED = "SELECT count(*) FROM call_records WHERE source = $1"
# Records per source from the planner's statistics (ANALYZE's share of each source times the
# table's row count): a catalog read, where counting a source of millions takes seconds.
_STORED_ESTIMATE = """
SELECT s.source, round(s.share * c.reltuples)::bigint AS records
FROM pg_class c, pg_stats p,
    unnest(p.most_common_vals::text::text[], p.most_common_freqs) AS s(source, share)
WHERE c.oid = 'call_records'::regclass AND c.reltuples > 0
  AND p.schemaname = current_schema() AND p.tablename = 'call_records' AND p.attname = 'source'
"""
_OPEN_BY_SOURCE = """
SELECT source, count(*) AS open FROM rejected_callbacks WHERE resolved_at IS NULL
GROUP BY source
"""
_RECONCILED = """
SELECT DISTINCT ON (source) source, status, finished_at, backfilled, discrepancies
FROM reconciliation_runs WHERE NOT dry_run ORDER BY source, started_at DESC
"""


@dataclass
class SourceOverview:
    name: str
    last_hour: dict[str, int] = field(default_factory=dict)  # outcome -> callbacks
    stored: int = 0
    estimated: bool = False  # `stored` is the planner's estimate
    open_rejections: int = 0
    reconciled: asyncpg.Record | None = None


async def overview(connection: asyncpg.Connection, sources: list[str]) -> list[SourceOverview]:
    rows = {name: SourceOverview(name) for name in sources}
    for row in await connection.fetch(_LAST_HOUR_BY_OUTCOME):
        entry = rows.setdefault(row["source"], SourceOverview(row["source"]))
        entry.last_hour[row["outcome"]] = int(row["callbacks"])
    for row in await connection.fetch(_OPEN_BY_SOURCE):
        rows.setdefault(row["source"], SourceOverview(row["source"])).open_rejections = int(
            row["open"]
        )
    if await has_table(connection, "reconciliation_runs"):
        for row in await connection.fetch(_RECONCILED):
            rows.setdefault(row["source"], SourceOverview(row["source"])).reconciled = row
    estimates = {
        row["source"]: int(row["records"]) for row in await connection.fetch(_STORED_ESTIMATE)
    }
    for entry in rows.values():
        if entry.name in estimates:
            entry.stored, entry.estimated = estimates[entry.name], True
        else:  # no statistics yet: a small table, or a source too rare to be among them
            entry.stored = int(await connection.fetchval(_STORED, entry.name))
    return [rows[name] for name in sorted(rows)]


_REJECTED = """
SELECT rejected_id, ingest_id, source, received_at, reason, message, body, replay_count,
    replayed_at
FROM rejected_callbacks
WHERE resolved_at IS NULL
  AND ($1::text IS NULL OR source = $1) AND ($2::text IS NULL OR reason = $2)
ORDER BY received_at DESC LIMIT $3
"""  # few open rows, under a partial index: the generic filter costs nothing here


async def rejected(
    connection: asyncpg.Connection, source: str | None, reason: str | None
) -> list[asyncpg.Record]:
    return list(await connection.fetch(_REJECTED, source, reason, PAGE))
