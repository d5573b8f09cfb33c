"""PostgreSQL connections for the workers, and what a database error means for a batch."""

from __future__ import annotations

import asyncio

import asyncpg

from schemas.record import RECORD_COLUMNS

# Per connection, a staging table shaped after call_records (so it cannot drift from the
# migrations): a batch is COPYed here, then upserted. ON COMMIT DELETE ROWS empties it.
STAGE_TABLE = "cdr_stage"
# The staging table's own columns, before the record's.
STAGE_ONLY_COLUMNS: tuple[str, ...] = (
    "ordinal",
    "deliveries",
    "first_received_at",
    "last_received_at",
    "ingest_id",
    "item",
    "content_hash",
    # Where the content's original request and parsed payload are (`workers.storage.originals`).
    "bundle_id",
    "original_item",
    "payload_item",
)
_CREATE_STAGE = f"""
CREATE TEMP TABLE IF NOT EXISTS {STAGE_TABLE} ON COMMIT DELETE ROWS AS
SELECT 0::integer AS ordinal, 0::integer AS deliveries,
       received_at AS first_received_at, received_at AS last_received_at,
       content_ingest_id AS ingest_id, content_item AS item, content_hash,
       bundle_id, original_item, payload_item, {", ".join(RECORD_COLUMNS)}
FROM call_records WITH NO DATA
"""  # noqa: S608 (identifiers are constants)


async def _prepare_connection(connection: asyncpg.Connection) -> None:
    await connection.execute(_CREATE_STAGE)


# The application name of this release's workers. The previous release's connect as
# "cdrflow-worker": `cdrflow migrate` tells them apart by it, and partitions the records
# (schema 12) once none of theirs is connected (workers.storage.records_partitioning).
WORKER_APPLICATION = "cdrflow-worker/2"


async def create_pool(url: str, size: int, name: str = WORKER_APPLICATION) -> asyncpg.Pool:
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


# SQLSTATE classes that blame the content: a value out of range or of the wrong form (22),
# a constraint (23), a program limit such as an index row too large (54). Isolating the
# rows at fault helps; retrying them does not.
_DATA_CLASSES = ("22", "23", "54")


def is_data_error(exc: BaseException) -> bool:
    """The database or its driver refused what the batch holds. COPY raises a bare
    OverflowError, TypeError or ValueError for a value its column cannot take; the driver's
    own refusal of an argument ("invalid input for query argument") is a ValueError too."""
    if isinstance(exc, asyncpg.PostgresError):
        return str(exc.sqlstate or "")[:2] in _DATA_CLASSES
    return isinstance(exc, OverflowError | TypeError | ValueError)


class ClaimedMeanwhile(Exception):
    """A concurrent transaction claimed some of the batch's deliveries (the same raw
    message, delivered again while its first worker still ran) and committed: this batch
    counted them again and was rolled back. Trying it again drops them."""

    def __init__(self, count: int) -> None:
        super().__init__(f"{count} deliveries of the batch were claimed meanwhile")
        self.count = count


def is_transient(exc: BaseException) -> bool:
    """Anything else the database or the network says is about their state (down,
    restarting, failing over, overloaded, out of disk, not migrated, permissions
    revoked): hold the batch and try again, for as long as it takes. Turning good
    records into rejections because the database had a bad minute would be worse."""
    if is_data_error(exc):
        return False
    return isinstance(
        exc,
        ClaimedMeanwhile | asyncpg.PostgresError | asyncpg.InterfaceError | OSError | TimeoutError,
    )


class DatabaseHold:
    """What the store tells the worker about the database, and the worker the store: a
    batch is waiting for the database to come back (`waiting`, set by the store), and
    waiting should end (`give_up`, set by the worker at shutdown with the database still
    down: the batch is then handed back to the broker)."""

    def __init__(self) -> None:
        self.waiting = asyncio.Event()
        self.give_up = asyncio.Event()
