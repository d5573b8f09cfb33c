-- cdrflow schema, version 12: call_records, record_revisions and originals partitioned by
-- month of stored_at, and call_keys, the deduplication key of every record (docs/storage.md,
-- "Exact deduplication across partitions").
--
-- A partitioned table's unique key must hold its partition key, so (source, external_id)
-- can no longer be call_records' unique key: call_keys (record_id, the uuid5 of source and
-- external id, primary key) is, unpartitioned, and names the stored_at of its record. The
-- workers claim their keys there first, in one order, then upsert the record in its
-- partition on (record_id, stored_at). Workers of the previous release cannot: they must be
-- stopped before this step (`cdrflow migrate` refuses while they are connected).
--
-- Before this transaction, `cdrflow migrate` (workers/storage/records_partitioning.py,
-- prepare) filled call_keys, proved each table's legacy bound, and built the new keys'
-- indexes concurrently. Here: the old keys give way to those, then (partition) each table
-- becomes the first partition of a partitioned table of its name, and the triggers,
-- functions and views are made again on the new tables. No row moves, no table is scanned.

SET LOCAL lock_timeout = '10s';

-- Made and filled before this transaction (prepare); here for the record of the schema.
CREATE TABLE IF NOT EXISTS call_keys (
    record_id   uuid PRIMARY KEY,
    stored_at   timestamptz NOT NULL
);

-- From now on the workers write the keys themselves.
DROP TRIGGER call_records_key ON call_records;
DROP FUNCTION call_key_of_record();

-- Made again on the partitioned table (records_partitioning.AFTER_PARTITIONING).
DROP TRIGGER call_records_1_write_single_revision ON call_records;
DROP TRIGGER call_records_2_keep_left_revision_content ON call_records;

ALTER TABLE call_records DROP CONSTRAINT call_records_pkey;
DROP INDEX call_records_record_id_idx;   -- the new primary key's first column
ALTER TABLE call_records ADD CONSTRAINT call_records_pkey
    PRIMARY KEY USING INDEX call_records_record_key;

ALTER TABLE record_revisions DROP CONSTRAINT record_revisions_pkey;
ALTER TABLE record_revisions ADD CONSTRAINT record_revisions_pkey
    PRIMARY KEY USING INDEX record_revisions_record_key;

ALTER SEQUENCE originals_bundle_seq OWNED BY NONE;
ALTER TABLE originals DROP CONSTRAINT originals_pkey;
ALTER TABLE originals ADD CONSTRAINT originals_pkey
    PRIMARY KEY USING INDEX originals_bundle_key;
