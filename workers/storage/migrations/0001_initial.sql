-- cdrflow schema, version 1.

CREATE TABLE call_records (
    record_id           uuid PRIMARY KEY,
    source              text NOT NULL,
    tenant              text NOT NULL,
    provider            text NOT NULL,
    event               text NOT NULL,
    external_id         text NOT NULL,
    call_type           text CHECK (call_type IN ('group_call', 'verification', 'telephone',
                            'direct_dial', 'agent_group_call', 'inbound', 'outbound',
                            'notification', 'bidirectional')),
    direction           text CHECK (direction IN ('outbound', 'inbound')),
    caller              text,
    callee              text,
    display_number      text,
    country_code        text,
    region              text,
    status              text NOT NULL CHECK (status IN ('answered', 'no_answer', 'busy',
                            'rejected', 'cancelled', 'failed', 'unknown')),
    hangup_cause        text,
    hangup_by           text CHECK (hangup_by IN ('caller', 'callee', 'agent', 'system')),
    sip_code            integer,
    submitted_at        timestamptz,
    started_at          timestamptz,
    ringing_at          timestamptz,
    answered_at         timestamptz,
    ended_at            timestamptz,
    ring_seconds        integer,
    talk_seconds        integer,
    billed_seconds      integer,
    billing_increment   text,
    currency            text NOT NULL DEFAULT 'USD',
    rate                numeric,
    cost                numeric,
    base_cost           numeric,
    recording_url       text,
    dtmf                text,
    user_data           text,
    agent_id            text,
    agent_name          text,
    agent_account       text,
    agent_group         text,
    labels              text[] NOT NULL DEFAULT '{}',
    extra               jsonb NOT NULL DEFAULT '{}',
    raw                 jsonb NOT NULL,
    schema_version      integer NOT NULL,
    -- the deduplication ledger
    received_at         timestamptz NOT NULL,   -- first delivery at the ingress
    stored_at           timestamptz NOT NULL DEFAULT now(),   -- first commit
    updated_at          timestamptz NOT NULL DEFAULT now(),   -- last new revision
    first_seen_at       timestamptz NOT NULL,
    last_seen_at        timestamptz NOT NULL,
    delivery_count      integer NOT NULL DEFAULT 1,
    revision            integer NOT NULL DEFAULT 1,
    -- which delivery brought the current content, and what that content is
    content_hash        bytea NOT NULL,
    content_received_at timestamptz NOT NULL,
    content_ingest_id   uuid NOT NULL,
    content_item        integer NOT NULL,
    CONSTRAINT call_records_source_external_id_key UNIQUE (source, external_id)
);
CREATE INDEX call_records_tenant_ended_at_idx ON call_records (tenant, ended_at);
CREATE INDEX call_records_received_at_idx ON call_records (received_at);

-- One row per delivery (HTTP request item) ever applied to a record: makes delivery_count
-- exact when a raw message is delivered twice (a worker died between commit and ack).
CREATE TABLE deliveries (
    ingest_id   uuid NOT NULL,
    item        integer NOT NULL,
    record_id   uuid NOT NULL,
    received_at timestamptz NOT NULL,
    PRIMARY KEY (ingest_id, item)
);
CREATE INDEX deliveries_received_at_idx ON deliveries (received_at);

-- Every accepted callback that could not become a record. item -1 is the whole request.
CREATE TABLE rejected_callbacks (
    rejected_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ingest_id       uuid NOT NULL,
    item            integer NOT NULL,
    source          text NOT NULL,
    tenant          text NOT NULL,
    provider        text NOT NULL,
    received_at     timestamptz NOT NULL,
    reason          text NOT NULL,
    message         text NOT NULL,
    request         jsonb NOT NULL,   -- method, path, query, content_type, headers, client
    body            bytea NOT NULL,   -- the body exactly as received
    rejected_at     timestamptz NOT NULL DEFAULT now(),
    last_failed_at  timestamptz NOT NULL DEFAULT now(),
    replayed_at     timestamptz,      -- last time `cdrflow replay` sent it again
    replay_count    integer NOT NULL DEFAULT 0,
    resolved_at     timestamptz,      -- a replay turned it into a record
    record_id       uuid,
    CONSTRAINT rejected_callbacks_ingest_item_key UNIQUE (ingest_id, item)
);
CREATE INDEX rejected_callbacks_open_idx ON rejected_callbacks (source, received_at)
    WHERE resolved_at IS NULL;

-- Records committed but not yet confirmed published on cdr.records (transactional outbox).
CREATE TABLE outbox (
    outbox_id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    record_id   uuid NOT NULL,
    revision    integer NOT NULL,
    routing_key text NOT NULL,
    body        bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
