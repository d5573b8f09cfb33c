"""Partitions made ahead, and old ones dropped whole: what `cdrflow retention` and
`cdrflow migrate` do to the tables of `workers.storage.partitions`.

Every step takes its locks with a short `lock_timeout`: a partition is attached or detached
under a brief lock of the parent, and a step that would wait behind a long query gives up
and says so (the next scheduled run does it) instead of queueing the workers behind it.

`partition_in_place` turns a plain table into a partitioned one without moving a row: the
table, whole, becomes the first partition (`<table>_legacy`, every key up to a bound a day
or more ahead), after `bound_in_place` has proved that bound with a CHECK constraint
validated while reads and writes go on. So the upgrade holds the table's lock only for
renames and catalog changes, whatever its size, and workers of the previous release keep
writing to the same name with the same statements."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from cdrflow.logs import get_logger
from cdrflow.settings import Settings
from workers.storage.partition_layout import create_like, drop_empty_current
from workers.storage.partitions import (
    PARTITIONED,
    PARTITIONED_BY_STEP,
    PartitionedTable,
    bound_literal,
    horizon,
    next_start,
    period_start,
    periods_ahead,
    upper_bound_time,
)

log = get_logger("cdrflow.retention")

Connection = asyncpg.Connection | PoolConnectionProxy

# A DETACH waiting for its lock holds up the workers queued behind it: never for long.
LOCK_TIMEOUT = "1s"


@dataclass(frozen=True)
class Partition:
    name: str
    bound: str  # as pg_get_expr writes it
    ends: datetime | None  # None: DEFAULT or MAXVALUE
    default: bool


@dataclass
class Report:
    """What a retention run did (or, dry, would do), one line per fact."""

    lines: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def __iter__(self) -> Iterator[str]:
        return iter(self.lines)


_PARTITIONS = """
SELECT c.relname AS name, pg_get_expr(c.relpartbound, c.oid) AS bound
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = to_regclass($1)
ORDER BY c.relname
"""


async def partitions_of(connection: Connection, table: PartitionedTable) -> list[Partition]:
    rows = await connection.fetch(_PARTITIONS, table.name)
    return [
        Partition(
            row["name"],
            row["bound"],
            upper_bound_time(table.kind, row["bound"]),
            row["bound"] == "DEFAULT",
        )
        for row in rows
    ]


async def is_partitioned(connection: Connection, table: PartitionedTable) -> bool:
    kind = await connection.fetchval(
        "SELECT relkind::text FROM pg_class WHERE oid = to_regclass($1)", table.name
    )
    return bool(kind == "p")


def _covered(partitions: list[Partition], table: PartitionedTable, start: datetime) -> bool:
    """Whether a partition already holds the period starting at `start` (the legacy
    partition may: it reaches up to its bound)."""
    lower = _lower_bound_time(table, partitions)
    return any(
        not p.default and p.ends is not None and lower.get(p.name, start) <= start < p.ends
        for p in partitions
    )


_LOWER = re.compile(r"FROM \((?:'([^']*)'|(MINVALUE))\)")


def _lower_bound_time(table: PartitionedTable, partitions: list[Partition]) -> dict[str, datetime]:
    found = {}
    for p in partitions:
        match = _LOWER.search(p.bound)
        if match is None:
            continue
        if match[2]:
            found[p.name] = datetime.min.replace(tzinfo=UTC)
        else:
            found[p.name] = upper_bound_time(table.kind, f"TO ('{match[1]}')") or datetime.max
    return found


async def ensure_ahead(
    connection: Connection, table: PartitionedTable, now: datetime, *, dry_run: bool = False
) -> list[str]:
    """Create the partitions of the current period and the `ahead` next ones that do not
    exist yet; returns their names."""
    partitions = await partitions_of(connection, table)
    created = []
    for start, end in periods_ahead(table, now):
        if _covered(partitions, table, start):
            continue
        name = table.partition_name(start)
        if not dry_run:
            await _create_partition(connection, table, name, start, end)
        created.append(name)
    return created


async def _create_partition(
    connection: Connection, table: PartitionedTable, name: str, start: datetime, end: datetime
) -> None:
    """Made as a plain table, its columns packed (`workers.storage.partition_layout`), then
    attached: ATTACH locks the parent in SHARE UPDATE EXCLUSIVE mode, which lets reads and
    writes go on (CREATE TABLE ... PARTITION OF would take ACCESS EXCLUSIVE). The parent's
    indexes are built on the empty table as it is attached; its DEFAULT partition is
    scanned for rows of the new range (it has none)."""
    async with connection.transaction():
        await connection.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        await create_like(connection, table.name, name)
        await connection.execute(
            f"ALTER TABLE {table.name} ATTACH PARTITION {name} FOR VALUES"
            f" FROM ({bound_literal(table.kind, start)}) TO ({bound_literal(table.kind, end)})"
        )
    log.info("partition_created", table=table.name, partition=name)


async def ensure_all_ahead(connection: Connection, now: datetime) -> list[str]:
    """The partitions ahead of every partitioned table (`cdrflow migrate` ends with it)."""
    created = []
    for table in PARTITIONED.values():
        if await is_partitioned(connection, table):
            created += await ensure_ahead(connection, table, now)
    return created


async def relayout_partitions(connection: asyncpg.Connection) -> int:
    """Migration 17, in its transaction: the partitions that have not ended and hold no
    row are made again, packed (`workers.storage.partition_layout`); returns how many."""
    now = datetime.now(UTC)
    made = 0
    for table in PARTITIONED.values():
        if await is_partitioned(connection, table) and await drop_empty_current(
            connection, table, now
        ):
            made += len(await ensure_ahead(connection, table, now))
    return made


async def hours_ahead(connection: Connection, now: datetime) -> dict[str, float]:
    """For each partitioned table, how many hours its partitions still cover from `now`
    (0 when the current period has none). A table a later schema step partitions is left
    out until then."""
    ahead = {}
    for table in PARTITIONED.values():
        if not await is_partitioned(connection, table):
            continue
        ends = [p.ends for p in await partitions_of(connection, table) if p.ends is not None]
        newest = max(ends, default=now)
        ahead[table.name] = max(0.0, (newest - now).total_seconds() / 3600)
    return ahead


def expired(partitions: list[Partition], past: datetime) -> list[Partition]:
    """The partitions whose every row is older than `past`: those that end at or before
    it. A partition that ends after it may hold a row inside retention, and stays."""
    return [p for p in partitions if p.ends is not None and p.ends <= past]


async def drop_partition(connection: Connection, table: PartitionedTable, name: str) -> None:
    async with connection.transaction():
        await connection.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        await connection.execute(f"ALTER TABLE {table.name} DETACH PARTITION {name}")
        await connection.execute(f"DROP TABLE {name}")
    log.info("partition_dropped", table=table.name, partition=name)


async def apply_retention(
    connection: Connection, settings: Settings, now: datetime, *, dry_run: bool
) -> Report:
    """For every partitioned table: create the partitions ahead, drop those past its
    retention (a month of records after deleting its keys from `call_keys`)."""
    report = Report()
    for table in PARTITIONED.values():
        if not await is_partitioned(connection, table):
            report.lines.append(f"{table.name}: not partitioned (run `cdrflow migrate`)")
            continue
        await _retain(connection, settings, table, now, dry_run, report)
    return report


# The deduplication keys of a month of records leave before the month does, in chunks, each
# its own transaction: the one exception to "never row by row" (docs/storage.md). Only the
# key of the record as stored there goes: a record stored again since under the same id (a
# re-push once its key was gone) keeps its own.
KEYS_CHUNK = 10_000
_KEYS_PAGE = """
SELECT record_id, stored_at FROM {partition}
WHERE $1::uuid IS NULL OR record_id > $1 ORDER BY record_id LIMIT $2
"""
_DELETE_KEYS = """
DELETE FROM call_keys k
USING unnest($1::uuid[], $2::timestamptz[]) AS u(record_id, stored_at)
WHERE k.record_id = u.record_id AND k.stored_at = u.stored_at
"""


async def delete_keys(connection: Connection, partition: str, chunk: int = KEYS_CHUNK) -> int:
    """Delete the `call_keys` rows of a partition's records; returns how many went."""
    deleted = 0
    after = None
    while True:
        rows = await connection.fetch(_KEYS_PAGE.format(partition=partition), after, chunk)
        if not rows:
            return deleted
        status = await connection.execute(
            _DELETE_KEYS, [r["record_id"] for r in rows], [r["stored_at"] for r in rows]
        )
        deleted += int(status.split()[-1])
        after = rows[-1]["record_id"]
        log.info("keys_deleted", partition=partition, deleted=deleted)


async def _retain(
    connection: Connection,
    settings: Settings,
    table: PartitionedTable,
    now: datetime,
    dry_run: bool,
    report: Report,
) -> None:
    try:
        created = await ensure_ahead(connection, table, now, dry_run=dry_run)
    except asyncpg.LockNotAvailableError:
        report.failed.append(table.name)
        report.lines.append(f"{table.name}: busy, partitions not created ahead (next run)")
    else:
        for name in created:
            report.created.append(name)
            report.lines.append(f"{table.name}: {_did(dry_run, 'create', 'created')} {name}")
        ready = periods_ahead(table, now)[-1][1]
        report.lines.append(
            f"{table.name}: partitions up to {ready:%Y-%m-%d} {_did(dry_run, 'exist', 'exist')}"
        )
    days = int(getattr(settings, table.retention_setting))
    past = horizon(now, days)
    setting = f"CDRFLOW_{table.retention_setting.upper()}"
    if past is None:
        report.lines.append(f"{table.name}: kept forever ({setting}=0)")
        return
    old = expired(await partitions_of(connection, table), past)
    for partition in old:
        line = f"{table.name}: {_did(dry_run, 'drop', 'dropped')} {partition.name}"
        line += f" (ends {partition.ends:%Y-%m-%d %H:%M:%S}Z, older than {days} days)"
        if table.keyed:
            line += "; its records' keys " + ("would go" if dry_run else "deleted first")
        if not dry_run:
            try:
                if table.keyed:
                    await delete_keys(connection, partition.name)
                await drop_partition(connection, table, partition.name)
            except asyncpg.LockNotAvailableError:
                report.failed.append(partition.name)
                report.lines.append(f"{table.name}: busy, {partition.name} not dropped (next run)")
                continue
        report.dropped.append(partition.name)
        report.lines.append(line)
    if not old:
        report.lines.append(f"{table.name}: nothing older than {days} days to drop")
    stray = await connection.fetchval(f"SELECT count(*) FROM {table.default_partition}")  # noqa: S608
    if stray:
        report.lines.append(
            f"{table.name}: {stray} rows in {table.default_partition}, which no partition"
            " covers (kept; see docs/storage.md)"
        )


def _did(dry_run: bool, doing: str, done: str) -> str:
    return f"would {doing}" if dry_run else done


# Partitioning a plain table in place (`cdrflow migrate`, version 9).

_BOUND_CONSTRAINT = "{table}_partition_bound"


def legacy_bound(table: PartitionedTable, now: datetime) -> datetime:
    """Where the legacy partition ends: the start of a period a day or more ahead, so that
    the rows workers of either release write meanwhile still fall inside it."""
    return next_start(table.granularity, period_start(table.granularity, now + timedelta(days=1)))


async def bound_in_place(connection: asyncpg.Connection, now: datetime, step: int = 9) -> None:
    """Outside any transaction, before the migration step: prove, for each plain table the
    step partitions, that every key is below its legacy bound. ADD ... NOT VALID holds the
    table's lock for a moment; VALIDATE scans it under SHARE UPDATE EXCLUSIVE, which lets
    reads and writes go on (and new rows are checked as they come)."""
    for table in _of_step(step):
        exists = await connection.fetchval(
            "SELECT relkind::text FROM pg_class WHERE oid = to_regclass($1)", table.name
        )
        if exists != "r":
            continue
        constraint = _BOUND_CONSTRAINT.format(table=table.name)
        bound = bound_literal(table.kind, legacy_bound(table, now))
        await connection.execute(f"ALTER TABLE {table.name} DROP CONSTRAINT IF EXISTS {constraint}")
        await connection.execute(
            f"ALTER TABLE {table.name} ADD CONSTRAINT {constraint}"
            f" CHECK ({table.key} < {bound}) NOT VALID"
        )
        try:
            await connection.execute(f"ALTER TABLE {table.name} VALIDATE CONSTRAINT {constraint}")
        except asyncpg.CheckViolationError:
            await connection.execute(f"ALTER TABLE {table.name} DROP CONSTRAINT {constraint}")
            raise RuntimeError(
                f"{table.name}: some {table.key} values are not UUID 7s made before"
                f" {legacy_bound(table, now):%Y-%m-%d}; the table cannot be partitioned in place"
            ) from None
        log.info("partition_bound_validated", table=table.name)


async def unbound_in_place(connection: asyncpg.Connection, step: int) -> None:
    """Drop the bounds `bound_in_place` proved, when the step that needed them did not run:
    a bound left behind would refuse the rows of every period after it."""
    for table in _of_step(step):
        exists = await connection.fetchval(
            "SELECT relkind::text FROM pg_class WHERE oid = to_regclass($1)", table.name
        )
        if exists == "r":
            constraint = _BOUND_CONSTRAINT.format(table=table.name)
            await connection.execute(
                f"ALTER TABLE {table.name} DROP CONSTRAINT IF EXISTS {constraint}"
            )


def _of_step(step: int) -> list[PartitionedTable]:
    return [PARTITIONED[name] for name in PARTITIONED_BY_STEP[step]]


async def partition_in_place(connection: asyncpg.Connection, step: int = 9) -> int:
    """In the migration step's transaction: each plain table becomes the first partition
    of a partitioned table of the same name, with its indexes, rights and identity
    sequence, and a DEFAULT partition. The partitions ahead are created after the commit
    (`ensure_all_ahead`), not under this transaction's locks. Returns how many tables
    were partitioned."""
    done = 0
    for table in _of_step(step):
        kind = await connection.fetchval(
            "SELECT relkind::text FROM pg_class WHERE oid = to_regclass($1)", table.name
        )
        if kind != "r":
            continue
        await _partition_one(connection, table)
        done += 1
    return done


async def _partition_one(connection: asyncpg.Connection, table: PartitionedTable) -> None:
    name, legacy = table.name, table.legacy_partition
    constraint = _BOUND_CONSTRAINT.format(table=name)
    check = await connection.fetchval(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE conrelid = to_regclass($1) AND conname = $2",
        name,
        constraint,
    )
    if check is None:
        raise RuntimeError(f"{name}: no {constraint}: bound_in_place did not run")
    bound = re.search(r"'([^']*)'", check)
    assert bound is not None
    ends = upper_bound_time(table.kind, f"TO ('{bound[1]}')")
    assert ends is not None
    indexes = await connection.fetch(_INDEXES, name)
    grants = await connection.fetch(_GRANTS, name)
    identities = await connection.fetch(_IDENTITIES, name)

    await connection.execute(f"ALTER TABLE {name} RENAME TO {legacy}")
    for index in indexes:
        await connection.execute(
            f"ALTER INDEX {index['name']} RENAME TO {_legacy_name(table, index['name'])}"
        )
    await connection.execute(
        f"CREATE TABLE {name} (LIKE {legacy} INCLUDING DEFAULTS INCLUDING IDENTITY"
        " INCLUDING CONSTRAINTS"
        f" INCLUDING STORAGE INCLUDING COMPRESSION) PARTITION BY RANGE ({table.key})"
    )
    # Its CHECK constraints come along (and are checked on every partition), but the bound.
    await connection.execute(f"ALTER TABLE {name} DROP CONSTRAINT {constraint}")
    for column in identities:
        await _continue_identity(connection, name, legacy, column["attname"])
    for index in indexes:
        if index["is_unique"] and table.key not in index["columns"]:
            continue  # a partitioned table's unique key must hold its partition key
        if index["constraint_def"]:
            await connection.execute(
                f"ALTER TABLE {name} ADD CONSTRAINT {index['name']} {index['constraint_def']}"
            )
        else:
            await connection.execute(index["definition"])
    for grant in grants:
        await connection.execute(f'GRANT {grant["privilege"]} ON {name} TO "{grant["grantee"]}"')
    await connection.execute(
        f"ALTER TABLE {name} ATTACH PARTITION {legacy}"
        f" FOR VALUES FROM (MINVALUE) TO ({bound_literal(table.kind, ends)})"
    )
    await connection.execute(f"ALTER TABLE {legacy} DROP CONSTRAINT {constraint}")
    await connection.execute(f"CREATE TABLE {table.default_partition} PARTITION OF {name} DEFAULT")
    log.info("table_partitioned", table=name, legacy_until=f"{ends:%Y-%m-%d}")


def _legacy_name(table: PartitionedTable, index: str) -> str:
    suffix = index.removeprefix(table.name)
    return f"{table.legacy_partition}{suffix}"[:63]


_INDEXES = """
SELECT i.relname AS name, x.indisunique AS is_unique, pg_get_indexdef(x.indexrelid) AS definition,
    ARRAY(SELECT a.attname FROM pg_attribute a
          WHERE a.attrelid = x.indrelid AND a.attnum = ANY(x.indkey))::text[] AS columns,
    (SELECT pg_get_constraintdef(c.oid) FROM pg_constraint c
     WHERE c.conindid = x.indexrelid AND c.contype IN ('p', 'u')) AS constraint_def
FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
WHERE x.indrelid = to_regclass($1)
ORDER BY i.relname
"""

_GRANTS = """
SELECT g.rolname AS grantee, a.privilege_type AS privilege
FROM pg_class c, aclexplode(c.relacl) a JOIN pg_roles g ON g.oid = a.grantee
WHERE c.oid = to_regclass($1) AND a.grantee <> c.relowner
"""

_IDENTITIES = """
SELECT attname FROM pg_attribute
WHERE attrelid = to_regclass($1) AND attidentity <> '' AND NOT attisdropped
"""


async def _continue_identity(
    connection: asyncpg.Connection, table: str, legacy: str, column: str
) -> None:
    """The new table's identity goes on from the old one's: ids stay unique."""
    old = await connection.fetchval("SELECT pg_get_serial_sequence($1, $2)", legacy, column)
    new = await connection.fetchval("SELECT pg_get_serial_sequence($1, $2)", table, column)
    row = await connection.fetchrow(f"SELECT last_value, is_called FROM {old}")  # noqa: S608
    assert row is not None
    await connection.execute("SELECT setval($1, $2, $3)", new, row["last_value"], row["is_called"])
