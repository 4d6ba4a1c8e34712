#!/bin/sh
# Entrypoint of agentbus/postgres: initialise $PGDATA when it is empty, then exec postgres
# with the arguments (the image's CMD).
#   POSTGRES_PASSWORD   password of POSTGRES_USER (required on the first start only)
#   POSTGRES_USER       login role that owns POSTGRES_DB (default agentbus)
#   POSTGRES_DB         the database (default agentbus)
# Authentication (pg_hba.conf): in the container, trust (the healthcheck, psql via
# `docker exec`); from the container's own subnets (`samenet`: the compose network, and
# the host through a port published there) a password (scram-sha-256); anything else is
# refused.
set -eu
: "${PGDATA:=/var/lib/postgresql/data}"
user=${POSTGRES_USER:-agentbus}
db=${POSTGRES_DB:-agentbus}

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -z "${POSTGRES_PASSWORD:-}" ]; then
    echo "postgres-entrypoint: set POSTGRES_PASSWORD (the password of $user) for the first start" >&2
    exit 2
  fi
  initdb --pgdata "$PGDATA" --username postgres --encoding UTF8 --locale C.UTF-8 \
    --auth-local trust --auth-host reject >/dev/null
  cat >"$PGDATA/pg_hba.conf" <<HBA
# written by postgres-entrypoint on the first start
# type  database  user  address       method
local   all       all                 trust
host    all       all   127.0.0.1/32  trust
host    all       all   ::1/128       trust
host    all       all   samenet       scram-sha-256
HBA
  pg_ctl --pgdata "$PGDATA" --wait --silent \
    --options "-c listen_addresses='' -c unix_socket_directories=/tmp" start
  psql --host /tmp --username postgres --dbname postgres --quiet --set ON_ERROR_STOP=1 \
    --set user="$user" --set db="$db" --set password="$POSTGRES_PASSWORD" <<'SQL'
CREATE ROLE :"user" LOGIN PASSWORD :'password';
CREATE DATABASE :"db" OWNER :"user";
SQL
  pg_ctl --pgdata "$PGDATA" --wait --silent stop
  echo "postgres-entrypoint: initialised $PGDATA (database $db, owner $user)"
fi
exec postgres -D "$PGDATA" "$@"
