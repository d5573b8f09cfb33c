-- cdrflow schema, version 4: where a record came from, and reconciliation with the
-- providers' own books.
--
-- origin: 'push' (the provider pushed it) or 'backfill' (found in the provider's books by
-- `cdrflow reconcile`). A constant default adds the column without rewriting the table;
-- the check is NOT VALID for the same reason: every existing row holds the default.
ALTER TABLE call_records ADD COLUMN origin text NOT NULL DEFAULT 'push';
ALTER TABLE call_records ADD CONSTRAINT call_records_origin_check
    CHECK (origin IN ('push', 'backfill')) NOT VALID;

-- One row per window a reconciliation pass listed and compared (or failed to): a failed
-- window stays due until a later pass over it succeeds.
CREATE TABLE reconciliation_runs (
    run_id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source            text NOT NULL,
    window_start      timestamptz NOT NULL,
    window_end        timestamptz NOT NULL,
    status            text NOT NULL CHECK (status IN ('running', 'ok', 'failed', 'beyond_horizon')),
    dry_run           boolean NOT NULL DEFAULT false,
    provider_records  integer NOT NULL DEFAULT 0,
    stored            integer NOT NULL DEFAULT 0,
    backfilled        integer NOT NULL DEFAULT 0,
    discrepancies     integer NOT NULL DEFAULT 0,
    error             text,
    started_at        timestamptz NOT NULL DEFAULT now(),
    finished_at       timestamptz
);
CREATE INDEX reconciliation_runs_source_window_idx
    ON reconciliation_runs (source, window_start, window_end);

-- What the provider's books say differently about a stored record, on what bills: kept,
-- never applied. One row per record and field; a later pass updates it.
CREATE TABLE reconciliation_discrepancies (
    source       text NOT NULL,
    external_id  text NOT NULL,
    record_id    uuid NOT NULL,
    field        text NOT NULL,
    ours         text,
    theirs       text,
    found_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, external_id, field)
);
CREATE INDEX reconciliation_discrepancies_record_idx ON reconciliation_discrepancies (record_id);

-- The shared rate limit of each provider account the reconcilers call: the next moment a
-- request may be sent. Every process reserves its turn with one upsert, whose row lock
-- orders them, so the provider's limit holds across processes and hosts.
CREATE TABLE reconciliation_rate_limits (
    account  text PRIMARY KEY,
    next_at  timestamptz NOT NULL
);
