-- cdrflow schema, version 11: the deliveries ledger without its index on received_at.
--
-- Every query of a time range of deliveries (`cdrflow status`, the console's overview)
-- now bounds `ingest_id` too, a UUID 7 made at the ingress just before `received_at`: it
-- reads only the partitions of that range, through the primary key. The index on
-- `received_at` only cost every callback one more index entry (docs/storage.md, "Bytes
-- per call").
--
-- Quick whatever the table holds: dropping an index is a catalog change and an unlink,
-- under a lock held for that alone (not waited for longer than lock_timeout). Workers of
-- the previous release never read by received_at; its `cdrflow status` and console still
-- do, and answer the same, from a scan of the deliveries, until they are upgraded too.

SET LOCAL lock_timeout = '10s';

DROP INDEX IF EXISTS deliveries_received_at_idx;
