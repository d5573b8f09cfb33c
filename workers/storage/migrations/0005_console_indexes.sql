-- What `cdrflow status` and the console read on a table of millions of records, each in one
-- indexed query.

-- A source's newest record (its last callback when it sent none within the hour). received_at
-- is written once, with the record, so this index never stops an update from being HOT.
CREATE INDEX IF NOT EXISTS call_records_source_received_at_idx
    ON call_records (source, received_at);

-- The console's record page lists the deliveries the ledger keeps for one record. One more
-- index on a table every callback inserts into; the ledger keeps rows for
-- delivery_retention_days only.
CREATE INDEX IF NOT EXISTS deliveries_record_id_idx ON deliveries (record_id);

-- The console's search by number: a prefix of the caller or the callee, as a range of
-- text_pattern_ops (~>=~ and ~<~), which an index serves even in a generic plan (a LIKE
-- with a bound pattern is not).
CREATE INDEX IF NOT EXISTS call_records_caller_prefix_idx
    ON call_records (caller text_pattern_ops);
CREATE INDEX IF NOT EXISTS call_records_callee_prefix_idx
    ON call_records (callee text_pattern_ops);
