"""PostgreSQL connections for the workers, and what a database error means for a batch."""

from __future__ import annotations

import asyncpg
from asyncpg.exceptions import _base as asyncpg_base

from schemas.record import RECORD_COLUMNS

# Per connection, a staging table shaped after call_records (so it cannot drift from the
# migrations): a batch is COPYed here, then upserted. ON COMMIT DELETE ROWS empties it.
STAGE_TABLE = "cdr_stage"
STAGE_COLUMNS: tuple[str, ...] = (
    "round",
    "deliveries",
    "first_received_at",
    "last_received_at",
    "ingest_id",
    "item",
    "content_hash",
    *RECORD_COLUMNS,
)
_CREATE_STAGE = f"""
CREATE TEMP TABLE IF NOT EXISTS {STAGE_TABLE} ON COMMIT DELETE ROWS AS
SELECT 0::integer AS round, 0::integer AS deliveries,
       received_at AS first_received_at, received_at AS last_received_at,
       content_ingest_id AS ingest_id, content_item AS item, content_hash,
       {", ".join(RECORD_COLUMNS)}
FROM call_records WITH NO DATA
"""  # noqa: S608 (identifiers are constants)


async def _prepare_connection(connection: asyncpg.Connection) -> None:
    await connection.execute(_CREATE_STAGE)


async def create_pool(url: str, size: int, name: str = "cdrflow-worker") -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        url,
        min_size=1,
        max_size=max(1, size),
        init=_prepare_connection,
        command_timeout=60,
        server_settings={"application_name": name, "timezone": "UTC"},
    )
    assert pool is not None
    return pool


class BatchDataError(Exception):
    """The database refused the batch's content (not its own state): some row is poison."""


# SQLSTATE classes and codes that say the database, not the batch, is the problem: hold
# the batch and try again. Anything else the database refuses is the content's fault.
_TRANSIENT_CLASSES = ("08", "53", "57")  # connection, resources, operator intervention
_TRANSIENT_CODES = frozenset(
    {
        "40001",  # serialization failure
        "40P01",  # deadlock
        "25006",  # read-only transaction: a failover in progress
        "55P03",  # lock not available
        "42P01",  # undefined table: the schema is not migrated yet
        "0A000",  # feature not supported: asyncpg's stale statement cache after a migration
    }
)


def is_transient(exc: BaseException) -> bool:
    """The database is down, restarting, failing over, overloaded or not migrated yet:
    hold the batch and try again (for as long as it takes)."""
    if isinstance(exc, asyncpg.PostgresError):
        code = str(exc.sqlstate or "")
        return code[:2] in _TRANSIENT_CLASSES or code in _TRANSIENT_CODES
    if isinstance(exc, asyncpg_base.DataError):
        return False
    return isinstance(exc, OSError | TimeoutError | asyncpg.InterfaceError)


def is_data_error(exc: BaseException) -> bool:
    """The database or its driver refused what the batch holds (a value out of range, an
    index row too large, a constraint): retrying the same rows cannot help, isolating
    them can. COPY raises a bare OverflowError, TypeError or ValueError for a value its
    column cannot take."""
    if isinstance(exc, asyncpg.PostgresError):
        return not is_transient(exc)
    return isinstance(exc, asyncpg_base.DataError | OverflowError | TypeError | ValueError)
