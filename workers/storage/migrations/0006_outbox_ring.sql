-- cdrflow schema, version 6: the outbox as a ring of partitions, emptied by TRUNCATE.
--
-- Every outbox row is deleted once published. In a plain table each delete leaves a dead
-- row that only VACUUM gives back: with autovacuum off, or behind on the hottest table, the
-- outbox grew by the size of every message ever sent. Now the rows go to four partitions in
-- turn, 5,000 rows each (a sequence counts them: nothing is updated to rotate), and a
-- worker's relay round truncates each partition it does not write to that holds no row
-- left to publish (workers/outbox.py and workers/records_publisher.py): its space comes back at once, vacuum or not.
--
-- Workers of the previous release keep working during a rolling upgrade: they insert into
-- `outbox` without a slot (the default picks it), and claim and delete through the parent.
-- The rows waiting now (a handful, unless the broker is down) move under a short lock.

CREATE SEQUENCE outbox_slot_seq;

-- The partition the n-th outbox row goes to.
CREATE FUNCTION outbox_slot_of(n bigint) RETURNS smallint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT ((n / 5000) % 4)::smallint $$;

ALTER TABLE outbox RENAME TO outbox_unpartitioned;
ALTER TABLE outbox_unpartitioned RENAME CONSTRAINT outbox_pkey TO outbox_unpartitioned_pkey;
ALTER SEQUENCE outbox_outbox_id_seq RENAME TO outbox_unpartitioned_outbox_id_seq;

CREATE TABLE outbox (
    outbox_id   bigint GENERATED ALWAYS AS IDENTITY,
    slot        smallint NOT NULL DEFAULT outbox_slot_of(nextval('outbox_slot_seq')),
    record_id   uuid NOT NULL,
    revision    integer NOT NULL,
    routing_key text NOT NULL,
    body        bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (outbox_id, slot)
) PARTITION BY LIST (slot);
CREATE TABLE outbox_0 PARTITION OF outbox FOR VALUES IN (0);
CREATE TABLE outbox_1 PARTITION OF outbox FOR VALUES IN (1);
CREATE TABLE outbox_2 PARTITION OF outbox FOR VALUES IN (2);
CREATE TABLE outbox_3 PARTITION OF outbox FOR VALUES IN (3);

INSERT INTO outbox (outbox_id, record_id, revision, routing_key, body, created_at)
OVERRIDING SYSTEM VALUE
SELECT outbox_id, record_id, revision, routing_key, body, created_at
FROM outbox_unpartitioned ORDER BY outbox_id;
SELECT setval(pg_get_serial_sequence('outbox', 'outbox_id'),
    (SELECT coalesce(max(outbox_id), 0) + 1 FROM outbox_unpartitioned), false);
DROP TABLE outbox_unpartitioned;
