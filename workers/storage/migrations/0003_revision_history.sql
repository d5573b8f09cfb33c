-- cdrflow schema, version 3: every revision of every record is kept.
--
-- record_revisions holds each distinct content a record has had: a delivery whose content
-- equals an earlier revision counts on that revision and changes nothing else. call_records
-- stays the latest view; its `revision` is the number of the revision it shows.

CREATE TABLE record_revisions (
    record_id       uuid NOT NULL,
    revision        integer NOT NULL,
    content_hash    bytea NOT NULL,
    content         jsonb NOT NULL,   -- the record's columns, as call_records held them, but raw
    raw             jsonb NOT NULL,   -- the provider payload of the delivery that brought it
    ingest_id       uuid NOT NULL,    -- the delivery that brought it
    item            integer NOT NULL,
    received_at     timestamptz NOT NULL,
    stored_at       timestamptz NOT NULL DEFAULT now(),
    first_seen_at   timestamptz NOT NULL,
    last_seen_at    timestamptz NOT NULL,
    delivery_count  integer NOT NULL,
    PRIMARY KEY (record_id, revision),
    CONSTRAINT record_revisions_content_key UNIQUE (record_id, content_hash)
);

-- An existing record becomes its current revision. Its earlier contents were never kept:
-- the deliveries counted before the upgrade all count on the revision it shows now.
-- content_hash is rewritten by `cdrflow migrate` after this step (workers/storage/migrate.py):
-- the hash now covers the normalized record (schemas/content.py), not the payload.
INSERT INTO record_revisions (record_id, revision, content_hash, content, raw, ingest_id,
    item, received_at, stored_at, first_seen_at, last_seen_at, delivery_count)
SELECT record_id, revision, content_hash,
    to_jsonb(c) - ARRAY['raw', 'received_at', 'stored_at', 'updated_at', 'first_seen_at',
        'last_seen_at', 'delivery_count', 'revision', 'content_hash', 'content_received_at',
        'content_ingest_id', 'content_item'],
    raw, content_ingest_id, content_item, content_received_at, updated_at, first_seen_at,
    last_seen_at, delivery_count
FROM call_records c;

-- The grace period of the outbox counts from the row's insert, not from its transaction's
-- start (the relay's lock-based claim is what makes a publish single; this only spares it
-- rows that the batch's own publisher is about to take).
ALTER TABLE outbox ALTER COLUMN created_at SET DEFAULT clock_timestamp();
