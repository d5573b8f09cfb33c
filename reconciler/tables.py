"""What reconciliation keeps in PostgreSQL: one row per window listed (`reconciliation_runs`),
one per difference on what bills (`reconciliation_discrepancies`), the provider's rate limit
shared by every process (`reconciliation_rate_limits`), and the lock that keeps two passes
off one source."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from reconciler.compare import Difference
from schemas.providers.books import Window
from schemas.record import record_id_for

# The advisory-lock namespace of reconciliation passes ("CDRF"); the key is the source's.
LOCK_CLASS = 0x43445246

Connection = asyncpg.Connection | PoolConnectionProxy

RUNNING, OK, FAILED, BEYOND_HORIZON = "running", "ok", "failed", "beyond_horizon"


@dataclass
class WindowCounts:
    provider_records: int = 0
    stored: int = 0
    backfilled: int = 0
    discrepancies: int = 0


async def try_lock_source(connection: Connection, source: str) -> bool:
    """Take the source's pass lock for this session, unless another session holds it."""
    return bool(
        await connection.fetchval(
            "SELECT pg_try_advisory_lock($1, hashtext($2))", LOCK_CLASS, source
        )
    )


async def unlock_source(connection: Connection, source: str) -> None:
    await connection.execute("SELECT pg_advisory_unlock($1, hashtext($2))", LOCK_CLASS, source)


_RESERVE = """
INSERT INTO reconciliation_rate_limits AS l (account, next_at)
VALUES ($1, clock_timestamp() + make_interval(secs => $2))
ON CONFLICT (account) DO UPDATE
SET next_at = greatest(l.next_at, clock_timestamp()) + make_interval(secs => $2)
RETURNING extract(epoch FROM l.next_at - clock_timestamp())::float8 - $2
"""


async def reserve_turn(connection: Connection, account: str, spacing: float) -> float:
    """Reserve the account's next request slot, `spacing` seconds after the one before
    (whichever process took it); returns how long to wait for it. The row lock of the
    upsert orders the processes; the database's clock is the only clock."""
    wait = await connection.fetchval(_RESERVE, account, spacing)
    return max(0.0, float(wait))


async def start_run(connection: Connection, source: str, window: Window, *, dry_run: bool) -> int:
    run_id = await connection.fetchval(
        "INSERT INTO reconciliation_runs (source, window_start, window_end, status, dry_run)"
        " VALUES ($1, $2, $3, $4, $5) RETURNING run_id",
        source,
        window.start,
        window.end,
        RUNNING,
        dry_run,
    )
    return int(run_id)


async def finish_run(
    connection: Connection,
    run_id: int,
    status: str,
    counts: WindowCounts,
    error: str | None = None,
) -> None:
    await connection.execute(
        "UPDATE reconciliation_runs SET status = $2, provider_records = $3, stored = $4,"
        " backfilled = $5, discrepancies = $6, error = $7, finished_at = now()"
        " WHERE run_id = $1",
        run_id,
        status,
        counts.provider_records,
        counts.stored,
        counts.backfilled,
        counts.discrepancies,
        error,
    )


# A window that failed (or whose pass died while running) and that no later pass has
# listed whole since: due again, however old, until the provider's horizon passes it.
_DUE = """
SELECT DISTINCT f.window_start, f.window_end
FROM reconciliation_runs f
WHERE f.source = $1 AND NOT f.dry_run AND f.status IN ('failed', 'running')
  AND f.window_start < $2
  AND NOT EXISTS (
      SELECT 1 FROM reconciliation_runs s
      WHERE s.source = f.source AND NOT s.dry_run AND s.status IN ('ok', 'beyond_horizon')
        AND s.window_start <= f.window_start AND s.window_end >= f.window_end
        AND s.run_id > f.run_id)
ORDER BY f.window_start
"""


async def windows_still_due(connection: Connection, source: str, before: datetime) -> list[Window]:
    """Failed windows that start before `before` (the start of this pass's lookback)."""
    rows = await connection.fetch(_DUE, source, before)
    return [Window(row["window_start"], row["window_end"]) for row in rows]


_STORED = """
SELECT external_id, record_id, status, talk_seconds, billed_seconds, rate, cost, base_cost
FROM call_records
WHERE record_id = ANY($2::uuid[]) AND source = $1
"""


async def stored_records(
    connection: Connection, source: str, external_ids: Collection[str]
) -> dict[str, asyncpg.Record]:
    # By primary key: a record's id is the uuid5 of its source and external id.
    ids = [record_id_for(source, external_id) for external_id in external_ids]
    rows = await connection.fetch(_STORED, source, ids)
    return {row["external_id"]: row for row in rows}


_KEEP = """
INSERT INTO reconciliation_discrepancies AS d
    (source, external_id, record_id, field, ours, theirs)
SELECT $1, u.external_id, u.record_id, u.field, u.ours, u.theirs
FROM unnest($2::text[], $3::uuid[], $4::text[], $5::text[], $6::text[])
    AS u(external_id, record_id, field, ours, theirs)
ON CONFLICT (source, external_id, field) DO UPDATE
SET record_id = excluded.record_id, ours = excluded.ours, theirs = excluded.theirs,
    found_at = now()
WHERE (d.ours, d.theirs) IS DISTINCT FROM (excluded.ours, excluded.theirs)
RETURNING field
"""
# A difference the provider's books no longer show (its cost caught up, a push revised
# the record) is no longer a discrepancy.
_FORGET = """
DELETE FROM reconciliation_discrepancies d
WHERE d.source = $1 AND d.external_id = ANY($2::text[])
  AND NOT EXISTS (
      SELECT 1 FROM unnest($3::text[], $4::text[]) AS u(external_id, field)
      WHERE u.external_id = d.external_id AND u.field = d.field)
"""


async def keep_discrepancies(
    connection: Connection,
    source: str,
    compared: Collection[str],
    found: Sequence[tuple[str, Any, Difference]],
) -> list[str]:
    """Upsert each difference (external id, record id, difference) of the records
    `compared`, and forget theirs that are gone; returns the fields of the differences
    that are new or changed (a difference seen before, unchanged, is not counted again)."""
    ids = [external_id for external_id, _, _ in found]
    fields = [difference.field for _, _, difference in found]
    async with connection.transaction():
        await connection.execute(_FORGET, source, list(compared), ids, fields)
        if not found:
            return []
        rows = await connection.fetch(
            _KEEP,
            source,
            ids,
            [record_id for _, record_id, _ in found],
            fields,
            [difference.ours for _, _, difference in found],
            [difference.theirs for _, _, difference in found],
        )
    return [row["field"] for row in rows]
