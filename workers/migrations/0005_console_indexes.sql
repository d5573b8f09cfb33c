-- What `cdrflow status` and the console read on a table of millions of records, each in one
-- indexed query.

-- A source's newest record (its last callback when it sent none within the hour). received_at
-- is written once, with the record, so this index never stops an update from being HOT.
CREATE INDEX IF NOT EXISTS call_records_source_received_at_idx
    ON call_records (source, received_at);
