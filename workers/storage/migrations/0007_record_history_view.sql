-- cdrflow schema, version 7: record_history, every revision of every record in one view, for
-- billing disputes (docs/storage.md).
--
-- A view and nothing else: it reads the tables as they are, locks nothing while it is
-- created, and stays the interface when how revisions are stored changes underneath.

CREATE VIEW record_history AS
SELECT c.source, c.external_id, r.record_id, r.revision,
    r.revision = c.revision AS shown,   -- the revision call_records shows now
    r.content,                          -- the record's columns at that revision, raw aside
    r.raw,                              -- the provider payload of the delivery that brought it
    r.content_hash, r.ingest_id, r.item, r.received_at, r.stored_at,
    r.first_seen_at, r.last_seen_at, r.delivery_count
FROM record_revisions r
JOIN call_records c ON c.record_id = r.record_id;
