-- cdrflow schema, version 8: a call costs its bytes once (docs/storage.md).
--
-- - `originals`: the request bytes that brought each revision, and the parsed payload
--   (`raw`), packed many to a row so that PostgreSQL's lz4 compresses them together: one
--   call's bytes share their keys and most of their values with the calls around them.
-- - `record_revisions` keeps a revision's `content` only while it is not the shown one:
--   `call_records` holds the shown content. Its `raw` moves into `originals`.
-- - A record stored once and never delivered again (most calls) has no `record_revisions`
--   row: its one revision is `call_records` itself, which then names its bundle. Its
--   first further delivery writes that row, from the values it had (trigger below).
-- - `call_records.raw` is NULL for what this release stores: `record_payloads` and
--   `record_history` give the parsed payload of every record and revision, in SQL.
--
-- Every statement here is quick whatever the tables hold (no rewrite, no scan): a nullable
-- column, a dropped NOT NULL, a new table, views, a trigger. Moving the rows stored before
-- is `cdrflow migrate`'s data step (workers/storage/payloads_migration.py), in short batches.
-- Workers of the previous release keep working meanwhile: they still write `raw` and
-- `content`, which the views read first, and the trigger keeps the content of a revision
-- whenever any worker moves `call_records` to another one.

SET LOCAL lock_timeout = '10s';

-- A worker takes a batch's bundle ids before it writes them: call_records names its bundle
-- in the same insert that creates it.
CREATE SEQUENCE originals_bundle_seq AS bigint;
CREATE TABLE originals (
    bundle_id   bigint PRIMARY KEY DEFAULT nextval('originals_bundle_seq'),
    stored_at   timestamptz NOT NULL DEFAULT now(),   -- the partition key, when partitioned
    -- An original is a header line (JSON: method, content_type, query, reading) and the body
    -- exactly as received; a payload is the parsed payload as JSON text (UTF-8).
    items       bytea[] COMPRESSION lz4 NOT NULL
);

ALTER SEQUENCE originals_bundle_seq OWNED BY originals.bundle_id;

ALTER TABLE call_records
    ALTER COLUMN raw DROP NOT NULL,
    -- Set while the record's one revision has no record_revisions row: where its
    -- original request and parsed payload are.
    ADD COLUMN bundle_id bigint,
    ADD COLUMN original_item smallint,
    ADD COLUMN payload_item smallint;
ALTER TABLE record_revisions
    ALTER COLUMN raw DROP NOT NULL,
    ALTER COLUMN content DROP NOT NULL,
    ADD COLUMN bundle_id bigint,        -- the originals row holding the two items below
    ADD COLUMN original_item smallint,  -- the request that brought it (NULL: stored before)
    ADD COLUMN payload_item smallint;   -- its parsed payload
-- The primary key (record_id, revision) finds a record's revisions as well: the
-- deduplication's look-up by hash reads them all (a handful) and compares.
ALTER TABLE record_revisions DROP CONSTRAINT record_revisions_content_key;

-- The content of a record as call_records holds it: what `record_revisions.content` holds
-- for a revision that is no longer shown.
CREATE FUNCTION record_content(c call_records) RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE AS $$
SELECT jsonb_build_object('record_id', c.record_id, 'source', c.source, 'tenant', c.tenant,
        'provider', c.provider, 'event', c.event, 'external_id', c.external_id,
        'status', c.status, 'call_type', c.call_type, 'direction', c.direction,
        'caller', c.caller, 'callee', c.callee, 'display_number', c.display_number,
        'country_code', c.country_code, 'region', c.region, 'hangup_cause', c.hangup_cause,
        'hangup_by', c.hangup_by, 'sip_code', c.sip_code, 'submitted_at', c.submitted_at,
        'started_at', c.started_at, 'ringing_at', c.ringing_at, 'answered_at', c.answered_at,
        'ended_at', c.ended_at, 'ring_seconds', c.ring_seconds, 'talk_seconds', c.talk_seconds,
        'billed_seconds', c.billed_seconds, 'billing_increment', c.billing_increment, 'currency', c.currency,
        'rate', c.rate, 'cost', c.cost, 'base_cost', c.base_cost,
        'recording_url', c.recording_url, 'dtmf', c.dtmf, 'user_data', c.user_data,
        'agent_id', c.agent_id, 'agent_name', c.agent_name, 'agent_account', c.agent_account,
        'agent_group', c.agent_group, 'labels', c.labels, 'extra', c.extra,
        'origin', c.origin)
    || jsonb_build_object('schema_version', c.schema_version)
$$;

-- Whatever worker moves call_records to another revision (this release's or the previous
-- one's), the revision it leaves keeps its content.
CREATE FUNCTION keep_left_revision_content() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE record_revisions SET content = record_content(OLD)
    WHERE record_id = OLD.record_id AND revision = OLD.revision AND content IS NULL;
    RETURN NEW;
END
$$;
-- A record's one revision, kept in call_records alone, gets its record_revisions row on the
-- record's first update after its insert (a further delivery counted by any worker's
-- upsert, before anything else of the batch): from the row as it was, so with the
-- deliveries and times it had. From then on the record is as every record was before.
CREATE FUNCTION write_single_revision() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO record_revisions (record_id, revision, content_hash, content, ingest_id, item,
        received_at, stored_at, first_seen_at, last_seen_at, delivery_count, bundle_id,
        original_item, payload_item)
    VALUES (OLD.record_id, OLD.revision, OLD.content_hash, NULL, OLD.content_ingest_id,
        OLD.content_item, OLD.received_at, OLD.stored_at, OLD.first_seen_at,
        OLD.last_seen_at, OLD.delivery_count, OLD.bundle_id, OLD.original_item,
        OLD.payload_item)
    ON CONFLICT DO NOTHING;
    NEW.bundle_id := NULL;
    NEW.original_item := NULL;
    NEW.payload_item := NULL;
    RETURN NEW;
END
$$;
-- Triggers fire in the order of their names: this one first.
CREATE TRIGGER call_records_1_write_single_revision
    BEFORE UPDATE ON call_records
    FOR EACH ROW WHEN (OLD.bundle_id IS NOT NULL)
    EXECUTE FUNCTION write_single_revision();

CREATE TRIGGER call_records_2_keep_left_revision_content
    BEFORE UPDATE OF revision ON call_records
    FOR EACH ROW WHEN (OLD.revision IS DISTINCT FROM NEW.revision)
    EXECUTE FUNCTION keep_left_revision_content();

CREATE FUNCTION original_header(original bytea) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT convert_from(substring(original FROM 1 FOR position('\x0a'::bytea IN original) - 1),
    'UTF8')::jsonb
$$;

CREATE FUNCTION original_body(original bytea) RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT substring(original FROM position('\x0a'::bytea IN original) + 1)
$$;

-- Every revision with its content, parsed payload and original request. The columns of
-- version 7 come first, in their order.
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
    original_body(o.items[r.original_item]) AS body
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
    original_body(o.items[c.original_item])
FROM call_records c
LEFT JOIN originals o ON o.bundle_id = c.bundle_id   -- kept, should its bundle be dropped
WHERE c.bundle_id IS NOT NULL;

-- The shown revision of every record, with its parsed payload (what `call_records.raw`
-- holds for the records stored before version 8) and the request that brought it.
CREATE VIEW record_payloads AS
SELECT source, external_id, record_id, revision, raw, method, content_type, query, body
FROM record_history WHERE shown;

-- The data step's place, so that an interrupted `cdrflow migrate` goes on from there.
CREATE TABLE cdrflow_data_steps (
    version         integer PRIMARY KEY,
    after_source    text,
    after_external  text,
    moved           bigint NOT NULL DEFAULT 0,
    finished_at     timestamptz
);
