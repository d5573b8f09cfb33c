"""`record_id_for(source, external_id)` in SQL (migration 13), on the real PostgreSQL: the
same uuid5 as schemas/record.py for every key (SHA-1's padding edges, non-ASCII, newlines,
quotes, empty strings), so that SQL finds a record by its key through the primary key."""

from __future__ import annotations

import random
import re
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from schemas.providers import default_registry
from schemas.record import RECORD_NAMESPACE, record_id_for
from schemas.sources import Sources
from tests.support.samples import envelope, sample
from workers.batch import Normalized
from workers.normalize import normalize_envelope
from workers.storage.database import create_pool
from workers.storage.transaction import write_batch

IN_SQL = (
    "SELECT array_agg(record_id_for(s, e) ORDER BY n)"
    " FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(s, e, n)"
)
# Hashed: the 16-byte namespace, then the name "{source}\n{external_id}" in UTF-8. SHA-1
# pads the message to 64-byte blocks; these message lengths sit on either side of a block
# or of the 56 bytes that leave room for the length.
EDGES = (55, 56, 63, 64, 119, 120, 127, 128)
ALPHABET = "az09-_.:/ '\"\\\n\t\r%$;é中文通话记录😀🇨🇳\u200b"


def keys_of_name_length(n: int) -> list[tuple[str, str]]:
    """Pairs whose name is n bytes long: ASCII, and with a 4-byte emoji at its end."""
    rest = n - 1  # the newline
    pairs = [("s" * (rest // 3), "e" * (rest - rest // 3))]
    if rest >= 4:
        pairs.append(("nx", "x" * (rest - 6) + "😀") if rest >= 6 else ("", "😀"))
    return [(s, e) for s, e in pairs if len(f"{s}\n{e}".encode()) == n]


def generated_keys() -> list[tuple[str, str]]:
    rng = random.Random(13)
    keys = [("", ""), ("", "x"), ("x", ""), ("nx-cc", "20231117134248000001")]
    for message_length in EDGES:
        keys += keys_of_name_length(message_length - 16)
    for n in range(1, 200):
        keys += keys_of_name_length(n)
    for _ in range(300):
        source = "".join(rng.choices(ALPHABET, k=rng.randint(0, 12)))
        external_id = "".join(rng.choices(ALPHABET, k=rng.randint(0, rng.choice((20, 80)))))
        keys.append((source, external_id))
    return keys


async def test_record_id_for_in_sql_is_the_workers_uuid5_for_every_key(
    db: asyncpg.Connection,
) -> None:
    keys = generated_keys()
    lengths = {len(f"{s}\n{e}".encode()) + 16 for s, e in keys}
    assert set(EDGES) <= lengths
    assert any(len(f"{s}\n{e}".encode()) > 64 for s, e in keys if not s.isascii())
    found = await db.fetchval(IN_SQL, [s for s, _ in keys], [e for _, e in keys])
    expected = [uuid.uuid5(RECORD_NAMESPACE, f"{s}\n{e}") for s, e in keys]
    mismatched = [(k, f, x) for k, f, x in zip(keys, found, expected, strict=True) if f != x]
    assert not mismatched
    assert expected == [record_id_for(s, e) for s, e in keys]
    assert await db.fetchval("SELECT record_id_for(NULL, 'x')") is None


async def test_every_role_may_call_it_and_it_is_immutable_and_parallel_safe(
    db: asyncpg.Connection,
) -> None:
    # PUBLIC executes a function unless revoked (deploy/postgres/grants.sql grants none).
    public_executes = await db.fetchval(
        "SELECT bool_or(a.grantee = 0 AND a.privilege_type = 'EXECUTE')"
        " FROM pg_proc p, aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a"
        " WHERE p.oid = 'record_id_for(text, text)'::regprocedure"
    )
    assert public_executes
    marks = await db.fetchrow(
        "SELECT provolatile::text, proparallel::text FROM pg_proc"
        " WHERE oid = 'record_id_for(text, text)'::regprocedure"
    )
    assert marks is not None
    assert tuple(marks) == ("i", "s")  # immutable (folded into a constant), parallel safe


@pytest.fixture
async def pool(database_url: str, db: asyncpg.Connection) -> AsyncIterator[asyncpg.Pool]:
    made = await create_pool(database_url, 1, name="test-record-id")
    try:
        yield made
    finally:
        await made.close()


async def test_a_stored_record_is_found_by_its_key_through_the_primary_key(
    pool: asyncpg.Pool, sources: Sources, db: asyncpg.Connection
) -> None:
    normalized = Normalized()
    for external_id in ("dispute-1", "dispute-2"):
        item = envelope(sample("nx-cc", external_id))
        normalized.extend(normalize_envelope(item, sources, default_registry()))
    async with pool.acquire() as connection:
        await write_batch(connection, normalized)

    by_key = "SELECT external_id FROM call_records WHERE record_id = record_id_for($1, $2)"
    assert await db.fetchval(by_key, "nx-cc", "dispute-2") == "dispute-2"
    assert await db.fetchval(by_key, "nx-cc", "unknown") is None
    revisions = await db.fetchval(
        "SELECT count(*) FROM record_history WHERE record_id = record_id_for('nx-cc', 'dispute-1')"
    )
    assert revisions == 1

    async with db.transaction():
        # The partitions hold two rows: a sequential scan would be cheaper. Disabled, it is
        # still what the planner picks when no index serves the condition.
        await db.execute("SET LOCAL enable_seqscan = off")
        plan = "\n".join(
            row[0]
            for row in await db.fetch(
                "EXPLAIN SELECT * FROM call_records"
                " WHERE record_id = record_id_for('nx-cc', 'dispute-1')"
            )
        )
    scans = [line.strip(" ->") for line in plan.splitlines() if " Scan " in line]
    assert scans, plan
    # Each month's partition (and the default) read through its own primary key.
    assert all(re.match(r"Index Scan using (call_records_\w+)_pkey on \1 ", s) for s in scans), plan
    # Folded into a constant at planning: the id itself is the index condition.
    assert str(record_id_for("nx-cc", "dispute-1")) in plan, plan
