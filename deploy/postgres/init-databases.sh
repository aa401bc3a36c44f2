#!/bin/sh
# One role and one database per service, each owned by its service (PostgreSQL's docker-entrypoint-initdb.d).
# The passwords come from the environment (deploy/generated/env/postgres.env, written by deploy/generate.py).
# SHINCHOKU_DB_PREFIX (empty by default) prefixes role and database names, for running it beside other data.
set -eu
prefix="${SHINCHOKU_DB_PREFIX:-}"
for service in catalog ingest reporting; do
  var="SHINCHOKU_DB_PASSWORD_$(echo "$service" | tr 'a-z' 'A-Z')"
  password="$(printenv "$var" || true)"
  if [ -z "$password" ]; then
    echo "init-databases: $var is not set (run deploy/generate.py)" >&2
    exit 1
  fi
  psql -v ON_ERROR_STOP=1 --no-psqlrc --username "${POSTGRES_USER:-postgres}" --dbname postgres \
    -v name="$prefix$service" -v password="$password" <<'SQL'
CREATE ROLE :"name" LOGIN PASSWORD :'password';
CREATE DATABASE :"name" OWNER :"name";
REVOKE ALL ON DATABASE :"name" FROM PUBLIC;
SQL
done
