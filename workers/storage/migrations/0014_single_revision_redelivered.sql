-- cdrflow schema, version 14: a record's one revision stays in call_records alone through
-- further deliveries of its own content (docs/storage.md).
--
-- Since schema 8 a record stored once has no record_revisions row: call_records is its
-- one revision (`bundle_id` set). Until now the trigger below wrote that row on the
-- record's first update of any kind, a re-push of the same bytes too, though call_records
-- counts that delivery exactly as the row would (one revision: its deliveries and times
-- are the record's). Now a writer that says so keeps the revision in call_records while
-- its deliveries bring that content only, and sets `bundle_id` to NULL in the update that
-- brings another content (a second revision): that update writes the row, from the record
-- as it was, as before.
--
-- The writer says so for its transaction: `SET LOCAL cdrflow.keeps_single_revision = 'on'`
-- (workers/storage/transaction.py, this release's batch transaction). For every other
-- update (the previous release's workers, still running while this step is applied, whose
-- upsert never sets `bundle_id`; any hand-written UPDATE) the trigger fires as before: the
-- record's first update writes the row. So the step is a rolling one, and both releases'
-- counts stay exact side by side. Only the trigger changes: no table is read or rewritten.

SET LOCAL lock_timeout = '10s';

CREATE OR REPLACE TRIGGER call_records_1_write_single_revision
    BEFORE UPDATE ON call_records
    FOR EACH ROW WHEN (OLD.bundle_id IS NOT NULL AND (NEW.bundle_id IS NULL
        OR current_setting('cdrflow.keeps_single_revision', true) IS DISTINCT FROM 'on'))
    EXECUTE FUNCTION write_single_revision();
