#!/bin/sh
# compose.yaml's PostgreSQL, first start: cdrflow's roles and database (roles.sql), with
# the dev passwords that compose.yaml's URLs use.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" \
    -v owner_password=dev-owner -v worker_password=dev-worker -v reader_password=dev-reader \
    -v console_password=dev-console \
    -f /cdrflow/roles.sql
