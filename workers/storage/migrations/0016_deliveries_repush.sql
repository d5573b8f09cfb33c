-- cdrflow schema, version 16: a record's deliveries indexed by record only for its
-- re-pushes (docs/storage.md, "Bytes per call"; workers/storage/deliveries_repush.py).
--
-- The first delivery of each revision is named by the revision (record_history's
-- ingest_id and item) and found by primary key: nine deliveries in ten in the bench. The
-- others keep `repush` true and are found through the partial index. `repush` is true
-- (the column's default) for every delivery stored before this step and for every one a
-- worker of the previous release writes; NULL for a first delivery written by this
-- release's workers (a NULL costs no byte; a false would cost a row eight).
--
-- Before this transaction, `cdrflow migrate` (deliveries_repush.prepare) added the column
-- (a catalog change) and built each partition's index CONCURRENTLY while workers of
-- either release went on writing. Here: the partitioned index on the parent alone, then
-- (deliveries_repush.attach) each partition's index attached to it, and the old index
-- dropped. Catalog changes only, each lock held for that alone (not waited for longer than
-- lock_timeout).

SET LOCAL lock_timeout = '10s';

-- Added before this transaction; here for the record of the schema.
ALTER TABLE deliveries ADD COLUMN IF NOT EXISTS repush boolean DEFAULT true;

CREATE INDEX IF NOT EXISTS deliveries_repush_record_id_idx ON ONLY deliveries (record_id)
    WHERE repush;
