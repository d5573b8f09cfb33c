-- cdrflow schema, version 9: deliveries and rejected_callbacks partitioned by time.
--
-- Both become range-partitioned on ingest_id, a UUID 7 whose first 48 bits are the
-- ingress time in milliseconds: their unique keys (ingest_id, item) hold the partition key
-- as they are, so a delivery claimed twice still collides and the statements of the
-- previous release keep working. Retention then drops whole partitions
-- (`cdrflow retention`), never rows.
--
-- No row moves. Before this step's transaction, `cdrflow migrate` proves with a CHECK
-- constraint, validated while reads and writes go on, that every ingest id is below a
-- bound a day or more ahead. In this step (workers/storage/partition_retention.py, partition_in_place) each
-- table is renamed <table>_legacy and attached whole, without a scan, as the partition of
-- every key below that bound; a DEFAULT partition and the partitions ahead are added. The
-- locks are held for catalog changes only, whatever the tables' size.

-- The least UUID 7 of the millisecond a time falls in: a query that knows its time range
-- can say `ingest_id >= uuid7_floor(...)` to read only the partitions of that range.
CREATE FUNCTION uuid7_floor(moment timestamptz) RETURNS uuid
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
        SELECT (lpad(to_hex(floor(extract(epoch FROM moment) * 1000)::bigint), 12, '0')
            || '00000000000000000000')::uuid
    $$;
