-- cdrflow schema, version 2: one unique key on call_records.
--
-- record_id is derived from (source, external_id), so two unique indexes said the same
-- thing twice. But INSERT ... ON CONFLICT only absorbs conflicts on the index it names:
-- two workers inserting the same new call at once could trip the other one (23505).
-- (source, external_id) is the key (SPEC); record_id keeps a plain index for lookups.

ALTER TABLE call_records DROP CONSTRAINT call_records_pkey;
ALTER TABLE call_records DROP CONSTRAINT call_records_source_external_id_key;
ALTER TABLE call_records ADD CONSTRAINT call_records_pkey PRIMARY KEY (source, external_id);
CREATE INDEX call_records_record_id_idx ON call_records (record_id);
