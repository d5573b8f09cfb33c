"""A parsed payload that is its request's body byte for byte is stored once (schema 15):
the revision's `payload_item` is its `original_item`, and every reader gets the same
`raw`, `body` and history as from the two items the previous release stores."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from cdrflow.operations.history import load_history
from cdrflow.operations.reprocess import ReprocessSelection, reprocess
from schemas.jsoncodec import loads
from schemas.providers import default_registry
from schemas.sources import Sources
from tests.support.samples import Sample, envelope, sample
from workers.batch import Normalized
from workers.normalize import normalize_envelope
from workers.storage.database import create_pool
from workers.storage.transaction import write_batch

T0 = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)

# Everything the views say of a record's revisions, in one order.
HISTORY = """
SELECT revision, shown, content, raw::text AS raw, body, method, content_type, query
FROM record_history WHERE external_id = $1 ORDER BY revision
"""
PAYLOADS = """
SELECT revision, raw::text AS raw, body, method, content_type, query
FROM record_payloads WHERE external_id = $1
"""
# Where each revision's items are, from the row that names them.
PLACES = """
SELECT c.revision, c.bundle_id, c.original_item, c.payload_item FROM call_records c
WHERE c.external_id = $1 AND c.bundle_id IS NOT NULL
UNION ALL
SELECT r.revision, r.bundle_id, r.original_item, r.payload_item
FROM record_revisions r JOIN call_records c USING (record_id)
WHERE c.external_id = $1 AND r.bundle_id IS NOT NULL
ORDER BY 1
"""
# The bundle a revision names, its payload stored as the previous release stores it: an
# item of its own, the body's bytes (what the new writer left out).
AS_BEFORE = """
WITH moved AS (
    UPDATE originals o SET items = o.items || original_body(o.items[$2])
    WHERE o.bundle_id = $1 RETURNING cardinality(o.items) AS item
), c AS (
    UPDATE call_records SET payload_item = (SELECT item FROM moved)
    WHERE bundle_id = $1 AND original_item = $2 AND payload_item = $2
)
UPDATE record_revisions SET payload_item = (SELECT item FROM moved)
WHERE bundle_id = $1 AND original_item = $2 AND payload_item = $2
"""
# docs/storage.md: every payload, each bundle read once.
EXPORT = """
SELECT r.record_id, r.revision,
    convert_from(CASE WHEN r.payload_item = r.original_item THEN original_body(i.item)
        ELSE i.item END, 'UTF8')::jsonb::text AS raw
FROM originals o
CROSS JOIN LATERAL unnest(o.items) WITH ORDINALITY AS i(item, n)
JOIN record_revisions r ON r.bundle_id = o.bundle_id AND r.payload_item = i.n
"""


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, 1)
    try:
        yield pool
    finally:
        await pool.close()


async def store(pool: asyncpg.Pool, sources: Sources, at: datetime, *requests: Sample) -> None:
    deliveries = [
        d
        for request in requests
        for d in normalize_envelope(envelope(request, at), sources, default_registry()).deliveries
    ]
    async with pool.acquire() as connection:
        await write_batch(connection, Normalized(deliveries=deliveries))


async def views(db: asyncpg.Connection, external_id: str) -> list[Any]:
    history = [dict(row) for row in await db.fetch(HISTORY, external_id)]
    payloads = [dict(row) for row in await db.fetch(PAYLOADS, external_id)]
    record_id = await db.fetchval(
        "SELECT record_id FROM call_records WHERE external_id = $1", external_id
    )
    found = await load_history(db, record_id)
    assert found is not None
    return [history, payloads, list(found.json_lines())]


async def items_stored(db: asyncpg.Connection, *external_ids: str) -> int:
    """The items written with content in the bundles of these records (an item no new
    revision needed is left empty)."""
    return int(
        await db.fetchval(
            "SELECT count(*) FROM originals o, unnest(o.items) AS i(item)"
            " WHERE length(i.item) > 0 AND o.bundle_id IN ("
            "  SELECT bundle_id FROM call_records WHERE external_id = ANY($1)"
            "  UNION SELECT r.bundle_id FROM record_revisions r JOIN call_records c"
            "  USING (record_id) WHERE c.external_id = ANY($1))",
            list(external_ids),
        )
    )


async def test_a_json_body_that_is_its_payload_is_one_item_and_reads_as_two_did(
    pool: asyncpg.Pool, sources: Sources, db: asyncpg.Connection
) -> None:
    first, second = sample("nx-cc", "same"), sample("nx-cc", "same", variant=1)
    await store(pool, sources, T0, first)
    assert await items_stored(db, "same") == 1
    await store(pool, sources, T0 + timedelta(hours=1), second)  # revision 2
    await store(pool, sources, T0 + timedelta(hours=2), first)  # a delivery of revision 1
    once = sample("nx-cc", "once")  # one revision, named by call_records alone
    await store(pool, sources, T0, once)
    assert await items_stored(db, "same", "once") == 3
    places = await db.fetch(PLACES, "same")
    assert [p["revision"] for p in places] == [1, 2]
    (alone,) = await db.fetch(PLACES, "once")
    assert all(p["payload_item"] == p["original_item"] for p in [*places, alone])
    assert await db.fetchval("SELECT bundle_id FROM call_records WHERE external_id = 'once'")

    history, payloads, lines = await views(db, "same")
    before_once = await views(db, "once")
    assert loads(before_once[0][0]["raw"]) == loads(once.body)
    assert [loads(h["raw"]) for h in history] == [loads(first.body), loads(second.body)]
    assert [bytes(h["body"]) for h in history] == [first.body, second.body]
    assert (payloads[0]["raw"], bytes(payloads[0]["body"])) == (history[1]["raw"], second.body)
    exported = await db.fetch(EXPORT)
    assert sorted((e["revision"], e["raw"]) for e in exported) == [
        (1, history[0]["raw"]),
        (2, history[1]["raw"]),
    ]

    # The same revisions with their payloads as the previous release stores them read
    # the same, column for column: history, payloads and `cdrflow history`.
    async with db.transaction():
        # Not a delivery: call_records' trigger must not move its revision.
        await db.execute("SET LOCAL session_replication_role = replica")
        for place in [*places, alone]:
            await db.execute(AS_BEFORE, place["bundle_id"], place["original_item"])
    for ext in ("same", "once"):
        assert all(p["payload_item"] != p["original_item"] for p in await db.fetch(PLACES, ext))
    assert await views(db, "same") == [history, payloads, lines]
    assert await views(db, "once") == before_once


@pytest.mark.parametrize(
    "request_of",
    [
        pytest.param(lambda: sample("nx-dr", "other"), id="form-encoded"),
        pytest.param(lambda: sample("hw", "other"), id="huawei-k=v"),
        pytest.param(lambda: _spaced(sample("nx-cc", "other")), id="json-with-spaces"),
    ],
)
async def test_a_body_that_is_not_its_payload_keeps_both_items(
    pool: asyncpg.Pool, sources: Sources, db: asyncpg.Connection, request_of: Any
) -> None:
    request = request_of()
    await store(pool, sources, T0, request)
    assert await items_stored(db, "other") == 2
    (place,) = await db.fetch(PLACES, "other")
    assert place["payload_item"] == place["original_item"] + 1
    (row,) = await db.fetch(HISTORY, "other")
    assert bytes(row["body"]) == request.body
    payload = await db.fetchval(
        "SELECT convert_from(items[$2], 'UTF8')::jsonb::text FROM originals WHERE bundle_id = $1",
        place["bundle_id"],
        place["payload_item"],
    )
    assert row["raw"] == payload


async def test_a_batch_mixes_both_and_each_reads_its_own(
    pool: asyncpg.Pool, sources: Sources, db: asyncpg.Connection
) -> None:
    same, spaced, form = sample("nx-cc", "a"), _spaced(sample("nx-cc", "b")), sample("nx-dr", "c")
    await store(pool, sources, T0, same, spaced, form)
    assert await items_stored(db, "a", "b", "c") == 5  # three requests, two payloads of their own
    for request in (same, spaced):
        (row,) = await db.fetch(HISTORY, request.external_id)
        assert loads(row["raw"]) == loads(request.body)
        assert bytes(row["body"]) == request.body
    (row,) = await db.fetch(HISTORY, "c")
    assert bytes(row["body"]) == form.body
    assert loads(row["raw"])["messageid"] == "c"


async def test_reprocess_reads_the_original_of_either_kind(
    pool: asyncpg.Pool, sources: Sources, db: asyncpg.Connection, database_url: str
) -> None:
    await store(pool, sources, T0, sample("nx-cc", "one-item"), sample("nx-dr", "two-items"))
    for source in ("nx-cc", "nx-dr"):
        done = await reprocess(
            database_url, sources, default_registry(), ReprocessSelection(source)
        )
        assert (done.examined, done.unchanged, done.no_original, done.not_derived) == (1, 1, 0, 0)


def _spaced(request: Sample) -> Sample:
    """The same JSON, written with spaces after `:` and `,` (Python's json.dumps)."""
    body = json.dumps(json.loads(request.body), ensure_ascii=False).encode()
    assert body != request.body
    return Sample(request.source, request.external_id, request.method, body, request.content_type)
