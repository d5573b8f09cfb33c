"""The physical layout of a new partition: its parent's columns, constraints, storage and
compression, with the columns in the order that wastes no alignment padding.

PostgreSQL stores a row's columns in their table's order, each aligned to its type (8
bytes for a timestamptz or a bigint, 4 for an integer), so a text followed by a
timestamptz wastes up to 7 bytes. `call_records` grew one migration at a time and wastes
about 21 bytes a row that way, some 28 bytes of heap a call. A partition's columns are
matched to its parent's by name, not by position (ATTACH checks names, types and
constraints), so each new partition is made with the fixed-length columns first, widest
alignment first, and the variable-length ones after them; the parent, and so what
`SELECT *` shows, keeps its order. Tuple routing maps a row between the two orders.

Migration 17 makes the empty partitions that have not ended again in this layout
(`drop_empty_current`, then the partitions ahead): on a new database every partition, on
one with rows the months made ahead."""

from __future__ import annotations

from datetime import datetime

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from cdrflow.logs import get_logger
from workers.storage.partitions import PartitionedTable, upper_bound_time

log = get_logger("cdrflow.migrate")

Connection = asyncpg.Connection | PoolConnectionProxy

_COLUMNS = """
SELECT a.attname AS name, format_type(a.atttypid, a.atttypmod) AS type,
    a.attnotnull AS not_null, pg_get_expr(d.adbin, d.adrelid) AS default_value,
    a.attcompression::text AS compression, a.attstorage::text AS storage,
    t.typstorage::text AS type_storage, t.typlen AS length, t.typalign::text AS align
FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""
_CHECKS = """
SELECT conname AS name, pg_get_constraintdef(oid) AS definition FROM pg_constraint
WHERE conrelid = to_regclass($1) AND contype = 'c' ORDER BY conname
"""
_COMPRESSION = {"l": "lz4", "p": "pglz"}
_STORAGE = {"p": "PLAIN", "e": "EXTERNAL", "m": "MAIN", "x": "EXTENDED"}


def _packing_rank(column: asyncpg.Record) -> int:
    """Fixed-length columns first, the most strictly aligned first (a uuid is 16 bytes
    aligned on 1: after the 8-byte ones it keeps their alignment), variable-length last."""
    if column["length"] < 0:
        return 5
    if column["align"] == "d":
        return 0
    if column["length"] % 8 == 0:
        return 1
    return {"i": 2, "s": 3}.get(column["align"], 4)


def _column_definition(column: asyncpg.Record) -> str:
    parts = [f'"{column["name"]}"', column["type"]]
    if column["compression"] in _COMPRESSION:
        parts.append(f"COMPRESSION {_COMPRESSION[column['compression']]}")
    if column["not_null"]:
        parts.append("NOT NULL")
    if column["default_value"] is not None:
        parts.append(f"DEFAULT {column['default_value']}")
    return " ".join(parts)


async def create_like(connection: Connection, parent: str, name: str) -> None:
    """Create the plain table `name`, ready to be attached to `parent`: what `CREATE
    TABLE name (LIKE parent INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE
    INCLUDING COMPRESSION)` makes, in the packed column order."""
    columns = sorted(await connection.fetch(_COLUMNS, parent), key=_packing_rank)
    checks = await connection.fetch(_CHECKS, parent)
    definitions = [_column_definition(c) for c in columns] + [
        f'CONSTRAINT "{c["name"]}" {c["definition"].removesuffix(" NOT VALID")}' for c in checks
    ]
    await connection.execute(f"CREATE TABLE {name} ({', '.join(definitions)})")
    for column in columns:
        if column["storage"] != column["type_storage"]:
            await connection.execute(
                f'ALTER TABLE {name} ALTER COLUMN "{column["name"]}"'
                f" SET STORAGE {_STORAGE[column['storage']]}"
            )


_PARTITIONS = """
SELECT c.relname AS name, pg_get_expr(c.relpartbound, c.oid) AS bound
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = to_regclass($1) ORDER BY c.relname
"""


async def drop_empty_current(
    connection: asyncpg.Connection, table: PartitionedTable, now: datetime
) -> list[str]:
    """In the caller's transaction: detach and drop each partition of `table` that has not
    ended and holds no row (a new database's legacy partition, the months made ahead),
    for the caller to make again; returns their names. The DEFAULT partition stays (it
    stays empty, whatever its layout), and so do the partitions of the past. The table
    is locked first, so that no row arrives between the look that finds a partition
    empty and its drop."""
    await connection.execute("SET LOCAL lock_timeout = '10s'")
    await connection.execute(f"LOCK TABLE {table.name} IN ACCESS EXCLUSIVE MODE")
    dropped = []
    for row in await connection.fetch(_PARTITIONS, table.name):
        name, bound = row["name"], row["bound"]
        ends = upper_bound_time(table.kind, bound)
        if bound == "DEFAULT" or (ends is not None and ends <= now):
            continue
        if await connection.fetchval(f"SELECT EXISTS (SELECT FROM {name})"):  # noqa: S608
            continue
        await connection.execute(f"ALTER TABLE {table.name} DETACH PARTITION {name}")
        await connection.execute(f"DROP TABLE {name}")
        dropped.append(name)
    if dropped:
        log.info("empty_partitions_dropped", table=table.name, partitions=dropped)
    return dropped
