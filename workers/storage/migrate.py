"""`cdrflow migrate`: create the database if it is missing, then apply the versioned SQL
steps in `workers/storage/migrations/` that it has not seen, each in its own transaction, under an
advisory lock so that concurrent runs are safe. Running it again changes nothing.

A step that SQL alone cannot do has its Python part in `AFTER_STEP`, run in the step's
transaction right after its SQL, and may have one in `BEFORE_STEP`, run before that
transaction (for work that must not hold its locks, such as validating a constraint while
writes go on). A `BEFORE_STEP` part must be safe to run again. A step that rewrites rows of
the live tables has its data step in `DATA_STEPS` instead: run after the SQL steps, in
short transactions of its own while workers keep writing, and gone on with by the next run
when interrupted. Schema 12's partitioning waits for the previous release's workers to
disconnect (`workers.storage.records_partitioning`): each run does it if it is still
pending and they have gone. Every run ends by creating the time partitions ahead."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from urllib.parse import unquote, urlsplit

import asyncpg

from cdrflow.logs import get_logger
from workers.storage import deliveries_repush, records_partitioning
from workers.storage.partition_retention import (
    bound_in_place,
    ensure_all_ahead,
    partition_in_place,
    relayout_partitions,
)
from workers.storage.payloads_migration import move_payloads
from workers.storage.records_partitioning import STEP as STEP_RECORDS
from workers.storage.records_partitioning import prepare as prepare_records
from workers.storage.records_partitioning import tidy as tidy_records
from workers.storage.rehash import rehash_stored_contents

log = get_logger("cdrflow.migrate")

_LOCK_KEY = 0x63647266  # "cdrf": serializes concurrent migrate runs
_STEP = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")
# 3: the content hash now covers the normalized record, not the payload.
# 9: deliveries and rejected_callbacks partitioned by time, in place (partition_retention).
# 12: call_keys, and the unique keys call_records, record_revisions and originals need once
#     partitioned; the partitioning itself is a part of its own, done once no worker of the
#     previous release is connected (`_partition_records`; records_partitioning).
# 16: deliveries indexed by record for their re-pushes alone (deliveries_repush).
# 17: the empty partitions that have not ended made again, packed (partition_layout).
AFTER_STEP: dict[int, Callable[[asyncpg.Connection], Awaitable[int]]] = {
    3: rehash_stored_contents,
    9: partition_in_place,
    deliveries_repush.STEP: deliveries_repush.attach,
    17: relayout_partitions,
}
BEFORE_STEP: dict[int, Callable[[asyncpg.Connection], Awaitable[None]]] = {
    9: lambda connection: bound_in_place(connection, datetime.now(UTC)),
    12: prepare_records,
    deliveries_repush.STEP: deliveries_repush.prepare,
}
# 8: each payload once, in `originals`; the shown content only in call_records.
DATA_STEPS: dict[int, Callable[[asyncpg.Connection], Awaitable[bool]]] = {
    8: move_payloads,
}


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def available() -> list[Migration]:
    found = []
    for entry in resources.files("workers.storage.migrations").iterdir():
        match = _STEP.fullmatch(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    return sorted(found, key=lambda m: m.version)


LATEST = available()[-1].version


def database_name(url: str) -> str:
    name = unquote(urlsplit(url).path.lstrip("/"))
    if not name:
        raise ValueError("the database URL names no database")
    return name


async def ensure_database(url: str) -> bool:
    """Create the URL's database when it does not exist. True when it was created."""
    try:
        connection = await asyncpg.connect(url)
    except asyncpg.InvalidCatalogNameError:
        pass
    else:
        await connection.close()
        return False
    name = database_name(url)
    quoted = '"' + name.replace('"', '""') + '"'
    admin = await asyncpg.connect(url, database="postgres")
    try:
        for attempt in range(20):
            try:
                await admin.execute(f"CREATE DATABASE {quoted}")
                break
            except (asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
                return False  # a concurrent run created it first (either error, by timing)
            except asyncpg.ObjectInUseError:
                # "template1 is being accessed by other users": a concurrent CREATE DATABASE
                await asyncio.sleep(0.1 * (attempt + 1))
        else:
            raise RuntimeError(f"could not create database {name}: template1 stayed busy")
    finally:
        await admin.close()
    log.info("database_created", database=name)
    return True


async def schema_version(connection: asyncpg.Connection) -> int:
    exists = await connection.fetchval("SELECT to_regclass('cdrflow_migrations') IS NOT NULL")
    if not exists:
        return 0
    return int(
        await connection.fetchval("SELECT coalesce(max(version), 0) FROM cdrflow_migrations")
    )


async def migrate(url: str) -> list[int]:
    """Bring the schema to the latest version, and the time partitions ahead
    (`workers.retention`); returns the versions applied now."""
    await ensure_database(url)
    connection = await asyncpg.connect(url)
    applied = []
    try:
        await _lock(connection)
        await connection.execute(
            "CREATE TABLE IF NOT EXISTS cdrflow_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {
            row["version"]
            for row in await connection.fetch("SELECT version FROM cdrflow_migrations")
        }
        for step in available():
            if step.version in done:
                continue
            if step.version in BEFORE_STEP:
                await BEFORE_STEP[step.version](connection)
            async with connection.transaction():
                await connection.execute(step.sql)
                if step.version in AFTER_STEP:
                    await AFTER_STEP[step.version](connection)
                await connection.execute(
                    "INSERT INTO cdrflow_migrations (version, name) VALUES ($1, $2)",
                    step.version,
                    step.name,
                )
            applied.append(step.version)
            log.info("migration_applied", version=step.version, name=step.name)
            if step.version == STEP_RECORDS:
                # At once when no worker of the previous release is connected: the later
                # steps then find the tables partitioned, as on a new database.
                await _partition_records(connection, [*done, *applied])
        for version, data_step in DATA_STEPS.items():
            if version in done or version in applied:
                await data_step(connection)
        if STEP_RECORDS in done or STEP_RECORDS in applied:
            await _partition_records(connection, [*done, *applied])
            await tidy_records(connection)
        await _partitions_ahead(connection)
    finally:
        await connection.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
        await connection.close()
    return applied


async def _partition_records(connection: asyncpg.Connection, versions: list[int]) -> bool:
    """Step 12's partitioning, unless done or still waiting for the previous release's
    workers to stop (then said in the log: the next run does it). The later steps applied
    already that made something on the records' tables make it again on the partitioned
    ones."""
    remade = [
        m.sql
        for m in available()
        if m.version in records_partitioning.REMADE and m.version in versions
    ]
    return await records_partitioning.complete(connection, remade)


async def complete_partitioning(connection: asyncpg.Connection) -> bool | None:
    """For `cdrflow retention` (hourly, as the schema owner): schema 12's partitioning, if
    it is pending and no worker of the previous release is connected any more. True when
    the tables are partitioned, False when it is still pending, None when a `cdrflow
    migrate` run holds the lock (it does it)."""
    if not await records_partitioning.is_pending(connection):
        return True
    if not await connection.fetchval("SELECT pg_try_advisory_lock($1)", _LOCK_KEY):
        return None
    try:
        versions = [
            row["version"]
            for row in await connection.fetch("SELECT version FROM cdrflow_migrations")
        ]
        return await _partition_records(connection, versions)
    finally:
        await connection.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)


async def partitioning_pending(url: str) -> bool:
    """Schema 12's partitioning not done yet (workers of the previous release were still
    connected when `cdrflow migrate` last ran)."""
    connection = await asyncpg.connect(url)
    try:
        return await records_partitioning.is_pending(connection)
    finally:
        await connection.close()


async def _lock(connection: asyncpg.Connection) -> None:
    """Wait for the other runs, without a statement open meanwhile: a run that builds an
    index CONCURRENTLY (step 12) waits for every open statement of the database, a
    `pg_advisory_lock` waiting for it among them."""
    while True:
        if await connection.fetchval("SELECT pg_try_advisory_lock($1)", _LOCK_KEY):
            return
        await asyncio.sleep(0.1)


async def _partitions_ahead(connection: asyncpg.Connection) -> None:
    try:
        created = await ensure_all_ahead(connection, datetime.now(UTC))
    except asyncpg.LockNotAvailableError:
        # A table busy past the lock timeout: `cdrflow retention` makes them on its next run.
        log.warning("partitions_ahead_deferred")
        return
    if created:
        log.info("partitions_created_ahead", partitions=created)
