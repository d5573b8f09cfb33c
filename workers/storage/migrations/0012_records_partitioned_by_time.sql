-- cdrflow schema, version 12: call_records, record_revisions and originals partitioned by
-- month of stored_at, and call_keys, the deduplication key of every record (docs/storage.md,
-- "Exact deduplication across partitions").
--
-- A partitioned table's unique key must hold its partition key, so (source, external_id)
-- can no longer be call_records' unique key: call_keys (record_id, the uuid5 of source and
-- external id, primary key) is, unpartitioned, and names the stored_at of its record. The
-- workers of this release claim their keys there first, in one order, then upsert the
-- record on (record_id, stored_at).
--
-- A rolling step (workers/storage/records_partitioning.py). Before this transaction,
-- `cdrflow migrate` (prepare) made call_keys, with a trigger that gives every record
-- inserted its key (the previous release's workers do not write keys), filled it, and built
-- the new keys' indexes concurrently: from here on the workers of both releases write the
-- plain tables side by side, the previous release's on (source, external_id), this
-- release's on (record_id, stored_at). The partitioning itself (the old keys dropped, each
-- table made the first partition of a partitioned table of its name: catalog changes only)
-- is done by a run of `cdrflow migrate` that finds no worker of the previous release
-- connected: at once on a database with none, else on the first run after they stopped
-- (records_partitioning.complete). Until then it is pending, and `cdrflow migrate` says so.

SET LOCAL lock_timeout = '10s';

-- Made and filled before this transaction (prepare); here for the record of the schema.
CREATE TABLE IF NOT EXISTS call_keys (
    record_id   uuid PRIMARY KEY,
    stored_at   timestamptz NOT NULL
);
