-- cdrflow's database roles, the least each process needs. Run once, as a superuser (or a
-- role with CREATEROLE and CREATEDB), before the first `cdrflow migrate`:
--   psql -v ON_ERROR_STOP=1 -v owner_password=... -v worker_password=... \
--        -v reader_password=... -v console_password=... -f deploy/postgres/roles.sql
-- Then, after every migration, deploy/postgres/grants.sql (the migration Job and
-- compose.yaml do it) grants the tables the migration created.
--
--   cdrflow_owner   owns the database and the schema; `cdrflow migrate` only.
--   cdrflow_worker  workers (and `cdrflow replay`): reads and writes the pipeline's tables,
--                   creates nothing but its session's temporary staging table.
--   cdrflow_reader  downstream queries (point it at a read replica): reads records only.
--   cdrflow_console the web console's browsing: reads the records and the pipeline's tables.
--   The ingress has no database role: it never connects to PostgreSQL.

CREATE ROLE cdrflow_owner LOGIN PASSWORD :'owner_password';
CREATE ROLE cdrflow_worker LOGIN PASSWORD :'worker_password';
CREATE ROLE cdrflow_reader LOGIN PASSWORD :'reader_password';
-- Read-only whatever a grant says: its sessions cannot write even by mistake.
CREATE ROLE cdrflow_console LOGIN PASSWORD :'console_password';
ALTER ROLE cdrflow_console SET default_transaction_read_only = on;

CREATE DATABASE cdrflow OWNER cdrflow_owner;
\connect cdrflow

-- Nobody but the owner creates objects; only cdrflow's roles connect.
REVOKE ALL ON DATABASE cdrflow FROM PUBLIC;
ALTER SCHEMA public OWNER TO cdrflow_owner;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT CONNECT ON DATABASE cdrflow TO cdrflow_worker, cdrflow_reader, cdrflow_console;
-- Each worker connection stages a batch in a temporary table (ON COMMIT DELETE ROWS).
GRANT TEMPORARY ON DATABASE cdrflow TO cdrflow_worker;
GRANT USAGE ON SCHEMA public TO cdrflow_worker, cdrflow_reader, cdrflow_console;
