-- Table rights of cdrflow's roles (deploy/postgres/roles.sql creates them). Idempotent: run
-- as cdrflow_owner after every `cdrflow migrate` (the Kubernetes migration Job and
-- compose.yaml do). A migration that adds a table adds its line here. Functions need none:
-- PUBLIC executes a function unless revoked, and roles.sql revokes no such right
-- (record_id_for, a record's id from its source and external id, is for every reader).
--   psql -v ON_ERROR_STOP=1 "$OWNER_DATABASE_URL" -f deploy/postgres/grants.sql

-- Workers: the upsert of call_records, every revision of a record (a new one inserted, a
-- repeated one counted; `cdrflow history` reads them), the deliveries ledger (a backfill
-- that changed nothing takes its claim back), rejected callbacks (stored, resolved, marked replayed), the outbox (claimed FOR
-- UPDATE, deleted once published, from the partition named; a drained partition truncated:
-- nothing a DELETE could not do, without the dead rows), the schema version they wait for.
-- No DDL, no other TRUNCATE, no other table. The time partitions of deliveries,
-- rejected_callbacks, call_records, record_revisions and originals need no grant: every
-- role reads and writes them through their parent
-- (the owner's `cdrflow retention` creates and drops them). The identity columns (rejected_callbacks,
-- outbox) need no sequence grant; the outbox's slot counter does.
GRANT SELECT, INSERT, UPDATE ON call_records TO cdrflow_worker;
-- The deduplication key of every record: a batch inserts its new keys and locks its known
-- ones (ON CONFLICT DO UPDATE ... WHERE false, and `cdrflow reprocess`'s FOR UPDATE: both
-- need UPDATE, neither writes a row). Keys leave by the owner's `cdrflow retention`.
GRANT SELECT, INSERT, UPDATE ON call_keys TO cdrflow_worker;
GRANT SELECT, INSERT, UPDATE ON record_revisions TO cdrflow_worker;
GRANT SELECT ON record_history TO cdrflow_worker;
-- The request bytes and parsed payloads of new revisions (and, through record_history,
-- of the old ones), their ids taken ahead from its sequence.
GRANT SELECT, INSERT ON originals TO cdrflow_worker;
GRANT USAGE ON SEQUENCE originals_bundle_seq TO cdrflow_worker;
GRANT SELECT, INSERT, DELETE ON deliveries TO cdrflow_worker;
GRANT SELECT, INSERT, UPDATE ON rejected_callbacks TO cdrflow_worker;
GRANT SELECT, INSERT, UPDATE, DELETE ON outbox TO cdrflow_worker;
GRANT SELECT, UPDATE, DELETE, TRUNCATE ON outbox_0, outbox_1, outbox_2, outbox_3 TO cdrflow_worker;
GRANT USAGE, SELECT ON SEQUENCE outbox_slot_seq TO cdrflow_worker;
GRANT SELECT ON cdrflow_migrations TO cdrflow_worker;
-- Where `cdrflow migrate`'s data steps stand: read like the schema version, written only by
-- the owner's `cdrflow migrate`.
GRANT SELECT ON cdrflow_data_steps TO cdrflow_worker;

-- The reconciler (`cdrflow reconcile`, `cdrflow reconciler`) connects as cdrflow_worker: it
-- reads call_records (above), keeps each window's run and each discrepancy (a discrepancy
-- that is gone is deleted), and reserves its turn of a provider account's rate limit.
GRANT SELECT, INSERT, UPDATE ON reconciliation_runs TO cdrflow_worker;
GRANT SELECT, INSERT, UPDATE, DELETE ON reconciliation_discrepancies TO cdrflow_worker;
GRANT SELECT, INSERT, UPDATE ON reconciliation_rate_limits TO cdrflow_worker;

-- Downstream readers: the records, their revisions and what the providers' books say
-- otherwise about them; nothing of the pipeline's bookkeeping.
GRANT SELECT ON call_records, record_revisions, record_history, record_payloads, originals,
    reconciliation_discrepancies TO cdrflow_reader;

-- The console (`cdrflow console`) browses with cdrflow_console: it reads, never writes. Its
-- actions (replay, requeue) use CDRFLOW_DATABASE_URL, the worker role, as `cdrflow replay`
-- does. A database whose roles.sql ran before the console existed has no such role: the
-- grants wait until it is created (roles.sql, "cdrflow_console").
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'cdrflow_console') THEN
        GRANT SELECT ON call_records, record_revisions, record_history, record_payloads,
            originals, deliveries,
            rejected_callbacks, outbox, cdrflow_migrations, cdrflow_data_steps, reconciliation_runs,
            reconciliation_discrepancies TO cdrflow_console;
    END IF;
END
$$;
