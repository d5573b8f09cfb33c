"""The SQL statements of the batch transaction (`workers.storage.transaction`), in the order it runs
them. Each takes whole columns as arrays (unnest), or reads the staging table, so a batch
costs a fixed number of statements whatever it holds."""

from __future__ import annotations

from schemas.record import CONTENT_COLUMNS, RECORD_COLUMNS
from workers.storage.database import STAGE_TABLE

# Which of the batch's deliveries were claimed before (a raw message delivered again): by
# primary key, in the partitions their ingest ids name (pruned at the executor's start).
# The pairs of the two arrays' product are read: the caller keeps the batch's own.
SEEN = """
SELECT ingest_id, item FROM deliveries
WHERE ingest_id = ANY($1::uuid[]) AND item = ANY($2::integer[])
"""

# The batch's records' keys, claimed first, in one order for all workers (record_id): a new
# one is inserted with this transaction's time, the `stored_at` of the record and of its
# partition; a known one is locked (DO UPDATE ... WHERE false locks the row and writes
# nothing); the new keys are returned. Two batches holding the same new call are serialized
# here: the second waits for the first's commit, then finds the key. Everything the batch
# then does to a record is under its key's lock, whatever partition the record is in.
CLAIM_KEYS = f"""
INSERT INTO call_keys AS k (record_id, stored_at)
SELECT DISTINCT record_id, now() FROM {STAGE_TABLE} ORDER BY record_id
ON CONFLICT (record_id) DO UPDATE SET stored_at = k.stored_at WHERE false
RETURNING record_id
"""  # noqa: S608

# This transaction nulls `bundle_id` itself when a record kept in call_records alone gets
# a second revision (UPSERT): migration 14's trigger then writes the first one's row only
# then, not on every update of the record.
KEEPS_SINGLE_REVISION = "SET LOCAL cdrflow.keeps_single_revision = 'on'"

# The batch brings one content for a stored record, the one it shows: `excluded.revision`
# is 1 when the batch holds one content for the record (its ordinal 0), and a record's
# contents in a batch differ from each other (`workers.storage.revisions`).
_SAME = "excluded.revision = 1 AND excluded.content_hash = c.content_hash"

# One row per record: its newest content, and the batch's counts. A record whose one
# revision is kept in call_records alone (`bundle_id` set, no record_revisions row) stays
# so when the batch brings that content only: call_records' counts and times are the
# revision's, moved here (`alone` in what is returned: nothing else to write for it).
# When the batch brings another content, `bundle_id` goes NULL, and migration 14's trigger
# writes the revision's row first, as the record was, so that what follows finds every
# revision there (the transaction sets `cdrflow.keeps_single_revision`; without it the
# trigger writes the row on any update, as before schema 14). A backfill (the
# provider's books) of a record stored already changes nothing: its row is locked, so that
# a push and a backfill of one id in two transactions are decided here, in one order, but
# neither updated nor returned. A push for a stored record returns the row as stored
# (`origin` among it: a backfilled record's next push replaces its content). A record is
# created when its key is ($1: the keys claimed new; `xmax = 0` cannot be read from a
# partitioned table's RETURNING).
UPSERT = f"""
INSERT INTO call_records AS c (
    {", ".join(RECORD_COLUMNS)}, received_at, first_seen_at, last_seen_at, delivery_count,
    revision, content_hash, content_received_at, content_ingest_id, content_item, bundle_id,
    original_item, payload_item, stored_at)
SELECT {", ".join(f"s.{c}" for c in RECORD_COLUMNS)}, t.first_received_at,
    t.first_received_at, t.last_received_at, t.deliveries, s.ordinal + 1, s.content_hash,
    s.last_received_at, s.ingest_id, s.item,
    -- a new record with one content is its one revision: no record_revisions row yet
    CASE WHEN t.newest = 0 THEN s.bundle_id END, CASE WHEN t.newest = 0 THEN s.original_item END,
    CASE WHEN t.newest = 0 THEN s.payload_item END, k.stored_at
FROM {STAGE_TABLE} s JOIN (
    SELECT record_id, max(ordinal) AS newest, sum(deliveries)::integer AS deliveries,
        min(first_received_at) AS first_received_at, max(last_received_at) AS last_received_at
    FROM {STAGE_TABLE} GROUP BY record_id
) t ON s.record_id = t.record_id AND s.ordinal = t.newest
JOIN call_keys k ON k.record_id = s.record_id  -- its partition: new or where it is stored
ORDER BY s.record_id
ON CONFLICT (record_id, stored_at) DO UPDATE SET
    delivery_count = c.delivery_count + excluded.delivery_count,
    received_at = least(c.received_at, excluded.received_at),
    first_seen_at = least(c.first_seen_at, excluded.first_seen_at),
    last_seen_at = greatest(c.last_seen_at, excluded.last_seen_at),
    bundle_id = CASE WHEN {_SAME} THEN c.bundle_id END,
    original_item = CASE WHEN {_SAME} THEN c.original_item END,
    payload_item = CASE WHEN {_SAME} THEN c.payload_item END
WHERE excluded.origin = 'push'
RETURNING record_id, record_id = ANY($1::uuid[]) AS created, revision, origin, content_received_at,
    received_at, stored_at, first_seen_at, last_seen_at, delivery_count,
    bundle_id IS NOT NULL AS alone
"""  # noqa: S608 (identifiers are constants; values are parameters)

# For the contents of records stored before (and locked by the upsert): the revision each
# one already is, if any, and the record's last revision number. A record's revisions are
# stored at or after it: only the partitions from its month on are read, and a revision of
# an earlier record of the same id (gone by retention) is not this one's.
KNOWN = f"""
SELECT s.record_id, s.ordinal, r.revision AS known,
    (SELECT max(m.revision) FROM record_revisions m
     WHERE m.record_id = s.record_id AND m.stored_at >= k.stored_at) AS last
FROM {STAGE_TABLE} s
JOIN call_keys k ON k.record_id = s.record_id
LEFT JOIN record_revisions r ON r.record_id = s.record_id AND r.content_hash = s.content_hash
    AND r.stored_at >= k.stored_at
WHERE s.record_id = ANY($1::uuid[])
"""  # noqa: S608


def _content_object(alias: str) -> str:
    """A revision's content: the record's columns but `raw` (kept in `originals`), as
    jsonb: the same object as migration 8's `record_content` (a migration that adds a
    record column changes both). Built from those columns alone: `to_jsonb(s) - ARRAY[...]`
    made the same value from the whole staged row, raw callback included, then dropped
    keys: a quarter more time a row for the same jsonb. At most 40 pairs a call: a function
    takes at most 100 arguments."""
    pairs = [f"'{c}', {alias}.{c}" for c in RECORD_COLUMNS if c != "raw"]
    calls = [pairs[i : i + 40] for i in range(0, len(pairs), 40)]
    return " || ".join(f"jsonb_build_object({', '.join(call)})" for call in calls)


# A revision's content is kept here only when the revision is not the one call_records
# shows (`u.keep`): the shown content is call_records' own columns, and the trigger of
# migration 8 writes it here when call_records moves on. Its original request and parsed
# payload are in `originals` (`workers.storage.originals`).
#
# A revision is stored at or after its record (every reader of record_revisions bounds it
# so, partitions by month): this transaction's time, or the record's when a transaction
# that started after this one stored the record first (its key was waited for).
NEW_REVISIONS = f"""
INSERT INTO record_revisions (record_id, revision, content_hash, content, ingest_id,
    item, received_at, first_seen_at, last_seen_at, delivery_count, bundle_id,
    original_item, payload_item, reprocessed_at, stored_at)
SELECT s.record_id, u.revision, s.content_hash,
    CASE WHEN u.keep THEN {_content_object("s")} END, s.ingest_id, s.item,
    s.first_received_at, s.first_received_at, s.last_received_at, s.deliveries,
    s.bundle_id, s.original_item, s.payload_item, CASE WHEN u.reprocessed THEN now() END,
    greatest(now(), k.stored_at)
FROM {STAGE_TABLE} s
JOIN unnest($1::uuid[], $2::integer[], $3::integer[], $4::boolean[], $5::boolean[])
    AS u(record_id, ordinal, revision, keep, reprocessed)
    ON s.record_id = u.record_id AND s.ordinal = u.ordinal
JOIN call_keys k ON k.record_id = s.record_id
"""  # noqa: S608

EARLIER_DELIVERED = """
UPDATE record_revisions r SET
    delivery_count = r.delivery_count + u.deliveries,
    first_seen_at = least(r.first_seen_at, u.first_seen_at),
    last_seen_at = greatest(r.last_seen_at, u.last_seen_at)
FROM unnest($1::uuid[], $2::integer[], $3::integer[], $4::timestamptz[], $5::timestamptz[])
    AS u(record_id, revision, deliveries, first_seen_at, last_seen_at)
JOIN call_keys k ON k.record_id = u.record_id
WHERE r.record_id = u.record_id AND r.revision = u.revision AND r.stored_at >= k.stored_at
"""

SHOWN = f"""
UPDATE call_records c SET
    {", ".join(f"{column} = s.{column}" for column in CONTENT_COLUMNS)},
    revision = u.revision, content_hash = s.content_hash,
    content_received_at = s.last_received_at, content_ingest_id = s.ingest_id,
    content_item = s.item, updated_at = now()
FROM {STAGE_TABLE} s
JOIN unnest($1::uuid[], $2::integer[], $3::integer[]) AS u(record_id, ordinal, revision)
    ON s.record_id = u.record_id AND s.ordinal = u.ordinal
JOIN call_keys k ON k.record_id = s.record_id
WHERE c.record_id = s.record_id AND c.stored_at = k.stored_at
"""  # noqa: S608

# The batch's deliveries, claimed last, once it is known which ones are the first
# delivery of a revision this transaction created (`repush` NULL: the revision names it)
# and which backfills changed nothing (no delivery: not claimed). In one order for all
# workers (the caller sorts them). A delivery not returned was claimed by a transaction
# that committed since SEEN: the batch counted it again, and is rolled back.
CLAIM = """
INSERT INTO deliveries (ingest_id, item, record_id, received_at, repush)
SELECT * FROM unnest($1::uuid[], $2::integer[], $3::uuid[], $4::timestamptz[], $5::boolean[])
ORDER BY 1, 2
ON CONFLICT DO NOTHING
"""

OUTBOX = """
INSERT INTO outbox (record_id, revision, routing_key, body)
SELECT * FROM unnest($1::uuid[], $2::integer[], $3::text[], $4::bytea[])
RETURNING outbox_id, slot, record_id, revision
"""

REJECT = """
INSERT INTO rejected_callbacks
    (ingest_id, item, source, tenant, provider, received_at, reason, message, request, body)
SELECT * FROM unnest($1::uuid[], $2::integer[], $3::text[], $4::text[], $5::text[],
    $6::timestamptz[], $7::text[], $8::text[], $9::jsonb[], $10::bytea[])
ON CONFLICT (ingest_id, item) DO UPDATE SET
    reason = excluded.reason, message = excluded.message, last_failed_at = now()
"""

RESOLVE = """
UPDATE rejected_callbacks r SET resolved_at = now(), record_id = u.record_id
FROM unnest($1::uuid[], $2::integer[], $3::uuid[]) AS u(ingest_id, item, record_id)
WHERE r.ingest_id = u.ingest_id AND r.item = u.item AND r.resolved_at IS NULL
"""
