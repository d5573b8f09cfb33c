-- cdrflow schema, version 10: a revision re-derived by `cdrflow reprocess` says so.
--
-- `reprocessed_at` is set on a revision that `cdrflow reprocess` made from the original
-- request of the revision shown before it, with the providers and sources file of that
-- day; NULL on a revision a delivery brought. The record's `origin` (push or backfill) is
-- where the call came from and stays what it was. A nullable column without a default and
-- a view replaced with one column more: no rewrite, no scan.

SET LOCAL lock_timeout = '10s';

ALTER TABLE record_revisions ADD COLUMN reprocessed_at timestamptz;

CREATE OR REPLACE VIEW record_history AS
SELECT c.source, c.external_id, r.record_id, r.revision,
    r.revision = c.revision AS shown,
    coalesce(r.content, CASE WHEN r.revision = c.revision THEN record_content(c) END)
        AS content,
    coalesce(r.raw, convert_from(o.items[r.payload_item], 'UTF8')::jsonb) AS raw,
    r.content_hash, r.ingest_id, r.item, r.received_at, r.stored_at,
    r.first_seen_at, r.last_seen_at, r.delivery_count,
    original_header(o.items[r.original_item]) ->> 'method' AS method,
    original_header(o.items[r.original_item]) ->> 'content_type' AS content_type,
    original_header(o.items[r.original_item]) ->> 'query' AS query,
    original_body(o.items[r.original_item]) AS body,
    r.reprocessed_at
FROM record_revisions r
JOIN call_records c ON c.record_id = r.record_id
LEFT JOIN originals o ON o.bundle_id = r.bundle_id
UNION ALL
SELECT c.source, c.external_id, c.record_id, c.revision, true, record_content(c),
    convert_from(o.items[c.payload_item], 'UTF8')::jsonb,
    c.content_hash, c.content_ingest_id, c.content_item, c.received_at, c.stored_at,
    c.first_seen_at, c.last_seen_at, c.delivery_count,
    original_header(o.items[c.original_item]) ->> 'method',
    original_header(o.items[c.original_item]) ->> 'content_type',
    original_header(o.items[c.original_item]) ->> 'query',
    original_body(o.items[c.original_item]),
    NULL::timestamptz   -- a record kept in call_records alone was stored by a delivery
FROM call_records c
LEFT JOIN originals o ON o.bundle_id = c.bundle_id
WHERE c.bundle_id IS NOT NULL;
