"""Schema 12 in place: `call_records`, `record_revisions` and `originals` partitioned by
month of `stored_at`, and `call_keys`, the one unpartitioned table that keeps deduplication
exact across partitions (docs/storage.md, "Exact deduplication across partitions").

A rolling step. The previous release's workers upsert with `ON CONFLICT (source,
external_id)`, which no table partitioned by time can serve; this release's claim the
record's key in `call_keys` first and upsert on `(record_id, stored_at)`. Both work on the
plain tables once the step's first part is done, so the step is in two parts:

1. The step itself (`prepare` before its transaction, safe to run again, while reads and
   writes go on; then migration 0012): `call_keys` is made, with a trigger that gives every
   record inserted from then on its key (the previous release's workers write none; this
   release's have claimed theirs first, and the trigger finds it there), and filled from
   `call_records` in chunks of `KEY_CHUNK`, each its own transaction; the CHECK constraints
   still NOT VALID are validated; the unique indexes the partitioned tables need, which
   hold the partition key, are built on the plain tables `CONCURRENTLY` (this release's
   workers upsert on them from then on, and attaching them later scans and builds
   nothing). The old keys stay, for the previous release's workers. The schema is then at
   version 12: this release's workers start.
2. The partitioning (`complete`), by a run of `cdrflow migrate` that finds no connection of
   the previous release's workers (`PREVIOUS_WORKERS`, their application name; this
   release's connect as `workers.storage.database.WORKER_APPLICATION`): right after the
   step on a database they do not use, else on the first run after the last of them
   stopped; until then each run says it is pending, and why. Outside a transaction, the
   bound of each legacy partition is proved by a validated CHECK (`bound_in_place`); then
   in one transaction the keys' trigger and the old unique keys go, each table becomes the
   first partition of a partitioned table of its name (`partition_in_place`), and the
   triggers, functions and views are made again on the new tables (a view or a trigger
   follows the table it was made on, now the legacy partition), with the later steps' own
   forms of them (`REMADE`). Only catalog changes run under the locks."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import asyncpg

from cdrflow.logs import get_logger
from workers.storage.concurrent_index import build_concurrently
from workers.storage.partition_retention import (
    bound_in_place,
    partition_in_place,
    unbound_in_place,
)

log = get_logger("cdrflow.migrate")

STEP = 12
KEY_CHUNK = 20_000
# The application name the previous release's workers connect with (its create_pool's
# default). This release's workers connect with another (database.WORKER_APPLICATION).
PREVIOUS_WORKERS = "cdrflow-worker"
# The later steps that make something on the records' tables again, in its newest form: a
# partitioning done after them makes it again with theirs (their SQL is run again after
# AFTER_PARTITIONING, which has step 12's forms).
# 14: the trigger writing a single revision; 15: record_history.
REMADE = (14, 15)

_PREVIOUS_CONNECTED = """
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND application_name = $1 AND pid <> pg_backend_pid()
"""


async def previous_workers(connection: asyncpg.Connection) -> int:
    """How many connections of the previous release's workers are open on the database."""
    return int(await connection.fetchval(_PREVIOUS_CONNECTED, PREVIOUS_WORKERS))


_CALL_KEYS = """
-- The deduplication key of every stored record, and where its record is: its partition's
-- `stored_at`. record_id is the uuid5 of (source, external_id) (schemas/record.py), so
-- this is the unique key of the records, whatever partition they are in.
CREATE TABLE IF NOT EXISTS call_keys (
    record_id   uuid PRIMARY KEY,
    stored_at   timestamptz NOT NULL
);
CREATE OR REPLACE FUNCTION call_key_of_record() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO call_keys (record_id, stored_at) VALUES (NEW.record_id, NEW.stored_at)
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS call_records_key ON call_records;
CREATE TRIGGER call_records_key AFTER INSERT ON call_records
    FOR EACH ROW EXECUTE FUNCTION call_key_of_record();
"""

_NOT_VALID = """
SELECT conrelid::regclass::text AS tbl, conname FROM pg_constraint
WHERE conrelid IN ('call_records'::regclass, 'record_revisions'::regclass, 'originals'::regclass)
  AND contype = 'c' AND NOT convalidated
"""

_KEY_PAGE = """
WITH page AS (
    SELECT record_id, stored_at FROM call_records
    WHERE $1::uuid IS NULL OR record_id > $1 ORDER BY record_id LIMIT $2
), added AS (
    INSERT INTO call_keys (record_id, stored_at) SELECT record_id, stored_at FROM page
    ON CONFLICT DO NOTHING
)
SELECT record_id FROM page ORDER BY record_id DESC LIMIT 1
"""

# The unique keys of the partitioned tables, which must hold the partition key. Built on
# the plain tables while they are read and written, attached as they are.
INDEXES = {
    "call_records_record_key":
        "UNIQUE INDEX CONCURRENTLY {} ON call_records (record_id, stored_at)",
    "record_revisions_record_key":
        "UNIQUE INDEX CONCURRENTLY {} ON record_revisions (record_id, revision, stored_at)",
    "originals_bundle_key": "UNIQUE INDEX CONCURRENTLY {} ON originals (bundle_id, stored_at)",
}  # fmt: skip
# (source, external_id) is no index of the partitioned table: every reader finds a record
# by its id, the uuid5 of that key. Schema 8's data step, while it has records left to
# move, walks call_records in that order: the legacy partition keeps this index for it
# alone (unique, so not copied to the parent), dropped once the step is done (`tidy`).
LEGACY_KEY = "call_records_source_external_id_key"
LEGACY_KEY_ATTACHED = "call_records_legacy_source_external_id_key"
_STEP_8_DONE = """
SELECT to_regclass('cdrflow_data_steps') IS NOT NULL AND EXISTS (
    SELECT FROM cdrflow_data_steps WHERE version = 8 AND finished_at IS NOT NULL)
"""


async def prepare(connection: asyncpg.Connection) -> None:
    """Before the step's transaction: the keys and the indexes (see the module doc). Safe
    to run again, while workers of either release write."""
    async with connection.transaction():
        await connection.execute("SET LOCAL lock_timeout = '10s'")
        await connection.execute(_CALL_KEYS)
    after = None
    filled = 0
    while True:
        last = await connection.fetchval(_KEY_PAGE, after, KEY_CHUNK)
        if last is None:
            break
        after = last
        filled += KEY_CHUNK
        log.info("call_keys_progress", records=filled)
    # A partition must hold its parent's CHECK constraints validated: validate those still
    # NOT VALID (migration 4's origin check) while reads and writes go on.
    for row in await connection.fetch(_NOT_VALID):
        await connection.execute(f"ALTER TABLE {row['tbl']} VALIDATE CONSTRAINT {row['conname']}")
    for name, definition in INDEXES.items():
        await build_concurrently(connection, name, f"CREATE {definition.format(name)}")
    if not await connection.fetchval(_STEP_8_DONE):
        await build_concurrently(
            connection,
            LEGACY_KEY,
            f"CREATE UNIQUE INDEX CONCURRENTLY {LEGACY_KEY} ON call_records (source, external_id)",
        )


async def tidy(connection: asyncpg.Connection) -> None:
    """After the data steps (every `cdrflow migrate`): once schema 8's data step is done,
    the legacy partition's (source, external_id) index has no reader left."""
    if await connection.fetchval(_STEP_8_DONE):
        await connection.execute(f"DROP INDEX IF EXISTS {LEGACY_KEY_ATTACHED}")


async def is_pending(connection: asyncpg.Connection) -> bool:
    """Step 12 applied, its partitioning not done yet."""
    kind = await connection.fetchval(
        "SELECT relkind::text FROM pg_class WHERE oid = to_regclass('call_records')"
    )
    return bool(kind == "r") and bool(
        await connection.fetchval(
            "SELECT to_regclass('cdrflow_migrations') IS NOT NULL AND EXISTS ("
            " SELECT FROM cdrflow_migrations WHERE version = $1)",
            STEP,
        )
    )


async def complete(
    connection: asyncpg.Connection, remade: Sequence[str] = (), now: datetime | None = None
) -> bool:
    """The step's second part (see the module doc), outside any transaction: True when the
    tables are partitioned (now or before), False when it is still pending because workers
    of the previous release are connected. `remade`: the SQL of the later steps of
    `REMADE` applied already, run again on the partitioned tables."""
    if not await is_pending(connection):
        return True
    connected = await previous_workers(connection)
    if connected:
        log.warning(
            "records_partitioning_pending",
            previous_workers=connected,
            hint="call_records, record_revisions and originals are partitioned by the first"
            " `cdrflow migrate` run after the previous release's workers (application_name"
            f" {PREVIOUS_WORKERS!r}) have stopped; meanwhile both releases write the plain"
            " tables",
        )
        return False
    await bound_in_place(connection, now or datetime.now(UTC), STEP)
    try:
        async with connection.transaction():
            await partition(connection, remade)
    except BaseException:
        await unbound_in_place(connection, STEP)
        raise
    log.info("records_partitioned")
    return True


async def partition(connection: asyncpg.Connection, remade: Sequence[str] = ()) -> int:
    """In a transaction, after `bound_in_place`: the old keys and the keys' trigger go,
    the three tables are partitioned in place, and the triggers, functions and views are
    made again on them (step 12's forms, then the later steps' `remade`)."""
    await connection.execute(BEFORE_PARTITIONING)
    done = await partition_in_place(connection, STEP)
    await connection.execute(AFTER_PARTITIONING)
    for sql in remade:
        await connection.execute(sql)
    return done


# What migration 0012 did in its transaction before the partitioning was a part of its own:
# no worker left that needs the old keys or the keys' trigger.
BEFORE_PARTITIONING = """
SET LOCAL lock_timeout = '10s';

-- This release's workers keep writing: the locks are taken in the order their batches
-- take theirs (the bundles' sequence, then call_records, record_revisions, originals), so
-- that a batch under way finishes first and the next waits, instead of one of them
-- deadlocking with this transaction.
ALTER SEQUENCE originals_bundle_seq OWNED BY NONE;
LOCK TABLE call_records, record_revisions, originals IN ACCESS EXCLUSIVE MODE;

-- From now on the workers write the keys themselves.
DROP TRIGGER call_records_key ON call_records;
DROP FUNCTION call_key_of_record();

-- Made again on the partitioned table (AFTER_PARTITIONING).
DROP TRIGGER call_records_1_write_single_revision ON call_records;
DROP TRIGGER call_records_2_keep_left_revision_content ON call_records;

ALTER TABLE call_records DROP CONSTRAINT call_records_pkey;
DROP INDEX call_records_record_id_idx;   -- the new primary key's first column
ALTER TABLE call_records ADD CONSTRAINT call_records_pkey
    PRIMARY KEY USING INDEX call_records_record_key;

ALTER TABLE record_revisions DROP CONSTRAINT record_revisions_pkey;
ALTER TABLE record_revisions ADD CONSTRAINT record_revisions_pkey
    PRIMARY KEY USING INDEX record_revisions_record_key;

ALTER TABLE originals DROP CONSTRAINT originals_pkey;
ALTER TABLE originals ADD CONSTRAINT originals_pkey
    PRIMARY KEY USING INDEX originals_bundle_key;
"""


# Made again on the partitioned tables: what migrations 8 and 10 made on the plain ones.
AFTER_PARTITIONING = """
-- The sequence of bundle ids belongs to the partitioned table, not to its legacy
-- partition: dropping that partition must not drop it.
ALTER SEQUENCE originals_bundle_seq OWNED BY originals.bundle_id;

CREATE FUNCTION record_content(c call_records) RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE AS $$
SELECT jsonb_build_object('record_id', c.record_id, 'source', c.source, 'tenant', c.tenant,
        'provider', c.provider, 'event', c.event, 'external_id', c.external_id,
        'status', c.status, 'call_type', c.call_type, 'direction', c.direction,
        'caller', c.caller, 'callee', c.callee, 'display_number', c.display_number,
        'country_code', c.country_code, 'region', c.region, 'hangup_cause', c.hangup_cause,
        'hangup_by', c.hangup_by, 'sip_code', c.sip_code, 'submitted_at', c.submitted_at,
        'started_at', c.started_at, 'ringing_at', c.ringing_at, 'answered_at', c.answered_at,
        'ended_at', c.ended_at, 'ring_seconds', c.ring_seconds, 'talk_seconds', c.talk_seconds,
        'billed_seconds', c.billed_seconds, 'billing_increment', c.billing_increment,
        'currency', c.currency,
        'rate', c.rate, 'cost', c.cost, 'base_cost', c.base_cost,
        'recording_url', c.recording_url, 'dtmf', c.dtmf, 'user_data', c.user_data,
        'agent_id', c.agent_id, 'agent_name', c.agent_name, 'agent_account', c.agent_account,
        'agent_group', c.agent_group, 'labels', c.labels, 'extra', c.extra,
        'origin', c.origin)
    || jsonb_build_object('schema_version', c.schema_version)
$$;

-- A row trigger runs on the partition, whose row type is the partition's: cast to the
-- parent's. A record's revisions are stored at or after it (`stored_at`): the condition
-- reads only the partitions from its month on.
CREATE OR REPLACE FUNCTION keep_left_revision_content() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE record_revisions SET content = record_content(OLD::call_records)
    WHERE record_id = OLD.record_id AND revision = OLD.revision
      AND stored_at >= OLD.stored_at AND content IS NULL;
    RETURN NEW;
END
$$;

CREATE TRIGGER call_records_1_write_single_revision
    BEFORE UPDATE ON call_records
    FOR EACH ROW WHEN (OLD.bundle_id IS NOT NULL)
    EXECUTE FUNCTION write_single_revision();

CREATE TRIGGER call_records_2_keep_left_revision_content
    BEFORE UPDATE OF revision ON call_records
    FOR EACH ROW WHEN (OLD.revision IS DISTINCT FROM NEW.revision)
    EXECUTE FUNCTION keep_left_revision_content();

-- As migration 10 made it, on the partitioned tables. A revision is stored at or after its
-- record, and its bundle at or after it: each join reads only the partitions from the
-- row's month on, and a revision of an earlier record of the same id (stored again after
-- its record left by retention) is not this record's.
CREATE OR REPLACE VIEW record_history AS
SELECT c.source, c.external_id, r.record_id, r.revision,
    r.revision = c.revision AS shown,
    coalesce(r.content, CASE WHEN r.revision = c.revision THEN record_content(c) END)
        AS content,
    coalesce(r.raw, convert_from(o.items[r.payload_item], 'UTF8')::jsonb) AS raw,
    r.content_hash, r.ingest_id, r.item, r.received_at, r.stored_at,
    r.first_seen_at, r.last_seen_at, r.delivery_count,
    original_header(o.items[r.original_item]) ->> 'method' AS method,
    original_header(o.items[r.original_item]) ->> 'content_type' AS content_type,
    original_header(o.items[r.original_item]) ->> 'query' AS query,
    original_body(o.items[r.original_item]) AS body,
    r.reprocessed_at
FROM record_revisions r
JOIN call_records c ON c.record_id = r.record_id AND r.stored_at >= c.stored_at
LEFT JOIN originals o ON o.bundle_id = r.bundle_id AND o.stored_at >= r.stored_at
UNION ALL
SELECT c.source, c.external_id, c.record_id, c.revision, true, record_content(c),
    convert_from(o.items[c.payload_item], 'UTF8')::jsonb,
    c.content_hash, c.content_ingest_id, c.content_item, c.received_at, c.stored_at,
    c.first_seen_at, c.last_seen_at, c.delivery_count,
    original_header(o.items[c.original_item]) ->> 'method',
    original_header(o.items[c.original_item]) ->> 'content_type',
    original_header(o.items[c.original_item]) ->> 'query',
    original_body(o.items[c.original_item]),
    NULL::timestamptz
FROM call_records c
LEFT JOIN originals o ON o.bundle_id = c.bundle_id AND o.stored_at >= c.stored_at
WHERE c.bundle_id IS NOT NULL;

DROP FUNCTION record_content(call_records_legacy);
"""
