"""Schema 16 in place: `deliveries.repush`, and the index by record of the re-pushes alone
(docs/storage.md, "Bytes per call").

A record's deliveries are listed by `cdrflow history` and its console page. Most of them
(nine in ten in the bench) are the first delivery of a revision, which the revision names
already (`record_revisions.ingest_id, item`, or `call_records.content_ingest_id,
content_item` for a record kept in `call_records` alone; both through `record_history`):
those are found by primary key. Only the others, re-pushes, need an index by record:
`deliveries_repush_record_id_idx (record_id) WHERE repush`, in place of the full
`deliveries_record_id_idx`.

`repush` is true for a re-push, for every delivery stored before this step and for every
one a worker of the previous release writes (the column's default): those stay indexed.
This release's workers write NULL for the first delivery of a revision they create, not
false: a NULL costs no byte (the row's null bitmap fits in the padding of its header), a
false would cost eight (a row's data is padded to eight bytes).

Before the step's transaction (`prepare`, safe to run again), while workers of either
release go on writing:

1. The column is added: a catalog change (the default of the rows already there is kept
   in the catalog, not written into them), under a lock held for that alone.
2. Each partition's part of the new index is built `CONCURRENTLY`. The deliveries stored
   before the step are all indexed (their `repush` is true): on them the new index is as
   large as the old one, and the bytes come back as their partitions leave by retention.

In the step's transaction (migration 0016, then `attach`): the partitioned index is made
on the parent alone, each partition's index is attached to it (one built now only for a
partition made since `prepare`, which is empty), and the old index is dropped. Catalog
changes only."""

from __future__ import annotations

import asyncpg

from workers.storage.concurrent_index import build_concurrently

STEP = 16
INDEX = "deliveries_repush_record_id_idx"
OLD_INDEX = "deliveries_record_id_idx"

_ADD_COLUMN = "ALTER TABLE deliveries ADD COLUMN IF NOT EXISTS repush boolean DEFAULT true"
_PARTITIONS = """
SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'deliveries'::regclass ORDER BY c.relname
"""


def partition_index(partition: str) -> str:
    return f"{partition}_repush_idx"[:63]


def _definition(partition: str) -> str:
    return f"{partition_index(partition)} ON {partition} (record_id) WHERE repush"


async def prepare(connection: asyncpg.Connection) -> None:
    """Before the step's transaction: the column, and each partition's index built without
    stopping writes. Safe to run again."""
    async with connection.transaction():
        await connection.execute("SET LOCAL lock_timeout = '10s'")
        await connection.execute(_ADD_COLUMN)
    for row in await connection.fetch(_PARTITIONS):
        partition = row["relname"]
        await build_concurrently(
            connection,
            partition_index(partition),
            f"CREATE INDEX CONCURRENTLY {_definition(partition)}",
        )


async def attach(connection: asyncpg.Connection) -> int:
    """In the step's transaction, after migration 0016's SQL made the partitioned index on
    the parent alone: attach each partition's index to it (the parent's index is valid once
    every partition's is attached). Returns how many were attached."""
    partitions = [row["relname"] for row in await connection.fetch(_PARTITIONS)]
    for partition in partitions:
        # Built by `prepare`; or now, for a partition made since (empty).
        await connection.execute(f"CREATE INDEX IF NOT EXISTS {_definition(partition)}")
        await connection.execute(
            f"ALTER INDEX {INDEX} ATTACH PARTITION {partition_index(partition)}"
        )
    await connection.execute(f"DROP INDEX {OLD_INDEX}")
    return len(partitions)
