-- cdrflow schema, version 15: a parsed payload that is its request's body, byte for byte,
-- is stored once.
--
-- A JSON body as our writer renders it (compact, keys in their order: what most providers
-- send) is its parsed payload exactly, and its bundle held it twice: lz4 still paid some
-- 26 bytes a call for the copy. From this release a revision whose payload bytes equal
-- its original request's body names no item of its own for the payload: `payload_item` is
-- its `original_item`, and the payload is that item's body (original_body). Two items of
-- a revision were never the same before, so every row stored earlier reads as it did,
-- and so do the rows of the previous release's workers, which keep writing both items
-- while the upgrade rolls. The views give the same `raw`, parsed from the same bytes.
-- A view replaced with the same columns (its grants stay): no table locked or read.

SET LOCAL lock_timeout = '10s';

CREATE OR REPLACE VIEW record_history AS
SELECT c.source, c.external_id, r.record_id, r.revision,
    r.revision = c.revision AS shown,
    coalesce(r.content, CASE WHEN r.revision = c.revision THEN record_content(c) END)
        AS content,
    coalesce(r.raw, convert_from(CASE WHEN r.payload_item = r.original_item
        THEN original_body(o.items[r.original_item]) ELSE o.items[r.payload_item] END,
        'UTF8')::jsonb) AS raw,
    r.content_hash, r.ingest_id, r.item, r.received_at, r.stored_at,
    r.first_seen_at, r.last_seen_at, r.delivery_count,
    original_header(o.items[r.original_item]) ->> 'method' AS method,
    original_header(o.items[r.original_item]) ->> 'content_type' AS content_type,
    original_header(o.items[r.original_item]) ->> 'query' AS query,
    original_body(o.items[r.original_item]) AS body,
    r.reprocessed_at
FROM record_revisions r
JOIN call_records c ON c.record_id = r.record_id AND r.stored_at >= c.stored_at
LEFT JOIN originals o ON o.bundle_id = r.bundle_id AND o.stored_at >= r.stored_at
UNION ALL
SELECT c.source, c.external_id, c.record_id, c.revision, true, record_content(c),
    convert_from(CASE WHEN c.payload_item = c.original_item
        THEN original_body(o.items[c.original_item]) ELSE o.items[c.payload_item] END,
        'UTF8')::jsonb,
    c.content_hash, c.content_ingest_id, c.content_item, c.received_at, c.stored_at,
    c.first_seen_at, c.last_seen_at, c.delivery_count,
    original_header(o.items[c.original_item]) ->> 'method',
    original_header(o.items[c.original_item]) ->> 'content_type',
    original_header(o.items[c.original_item]) ->> 'query',
    original_body(o.items[c.original_item]),
    NULL::timestamptz
FROM call_records c
LEFT JOIN originals o ON o.bundle_id = c.bundle_id AND o.stored_at >= c.stored_at
WHERE c.bundle_id IS NOT NULL;
