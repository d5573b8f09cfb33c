"""Rewriting the stored content hashes after the content form changed (migration 3).

Before it, `content_hash` was the hash of the provider payload; now it is the hash of the
normalized record's canonical form (`schemas.content`). Stored hashes of the old form would
never equal a re-push's, so every record would look changed on its next delivery. This
recomputes each record's hash from its stored columns, in the migration's transaction."""

from __future__ import annotations

from typing import Any

import asyncpg

from schemas.content import content_hash
from schemas.jsoncodec import loads_exact
from schemas.providers import Registry, default_registry
from schemas.record import CallRecord

CHUNK = 1_000
# Without `origin`: this runs in migration 3, before migration 4 adds the column (every
# record then was pushed, and a push's hash does not cover its origin).
_FIELDS = tuple(
    name for name in CallRecord.__dataclass_fields__ if name not in ("raw", "extra", "origin")
)
_READ = f"SELECT record_id, revision, raw, extra, {', '.join(_FIELDS)} FROM call_records"  # noqa: S608
_WRITE_RECORDS = """
UPDATE call_records c SET content_hash = u.content_hash
FROM unnest($1::uuid[], $2::bytea[]) AS u(record_id, content_hash)
WHERE c.record_id = u.record_id
"""
_WRITE_REVISIONS = """
UPDATE record_revisions r SET content_hash = u.content_hash
FROM unnest($1::uuid[], $2::integer[], $3::bytea[]) AS u(record_id, revision, content_hash)
WHERE r.record_id = u.record_id AND r.revision = u.revision
"""


def stored_record(row: asyncpg.Record) -> CallRecord:
    """A `call_records` row as the record a provider module built."""
    values: dict[str, Any] = {name: row[name] for name in _FIELDS}
    values["labels"] = tuple(values["labels"] or ())
    values["raw"] = loads_exact(row["raw"])
    values["extra"] = loads_exact(row["extra"])
    return CallRecord(**values)


def volatile_fields(record: CallRecord, registry: Registry) -> frozenset[str]:
    module = registry.get(f"{record.provider}.{record.event}")
    return module.volatile_fields if module is not None else frozenset()


async def rehash_stored_contents(
    connection: asyncpg.Connection, registry: Registry | None = None
) -> int:
    """Recompute every record's content hash (and its revision's); returns how many."""
    registry = registry or default_registry()
    done = 0
    async for chunk in _chunks(connection.cursor(_READ, prefetch=CHUNK)):
        hashed = [(row["record_id"], row["revision"], _hash(row, registry)) for row in chunk]
        ids, revisions, hashes = (list(column) for column in zip(*hashed, strict=True))
        await connection.execute(_WRITE_RECORDS, ids, hashes)
        await connection.execute(_WRITE_REVISIONS, ids, revisions, hashes)
        done += len(chunk)
    return done


def _hash(row: asyncpg.Record, registry: Registry) -> bytes:
    record = stored_record(row)
    return content_hash(record, volatile_fields(record, registry))


async def _chunks(rows: Any) -> Any:
    chunk: list[asyncpg.Record] = []
    async for row in rows:
        chunk.append(row)
        if len(chunk) == CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
