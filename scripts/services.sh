#!/usr/bin/env bash
# Installs (when missing) and starts the services Petrel's tests need, idempotently.
# Source it to get PETREL_TEST_POSTGRES_URL exported:  . scripts/services.sh
# Needs root (or sudo) on a fresh machine to install packages; does nothing when the URL is set.
set -euo pipefail

_petrel_sudo() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
_petrel_as_postgres() { if command -v runuser >/dev/null && [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else sudo -u postgres "$@"; fi; }

petrel_start_postgres() {
  if [ -n "${PETREL_TEST_POSTGRES_URL:-}" ]; then
    echo "services: using PETREL_TEST_POSTGRES_URL from the environment"
    return 0
  fi
  if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || ! command -v pg_ctlcluster >/dev/null; then
    echo "services: installing PostgreSQL from Debian's packages"
    _petrel_sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive _petrel_sudo apt-get install -y -qq postgresql >/dev/null
  fi
  local ver
  ver=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
  if ! pg_lsclusters -h | awk '{print $1" "$2}' | grep -qx "$ver main"; then
    _petrel_sudo pg_createcluster "$ver" main >/dev/null
  fi
  if ! pg_lsclusters -h | awk -v v="$ver" '$1==v && $2=="main" {print $4}' | grep -q online; then
    _petrel_sudo pg_ctlcluster "$ver" main start
  fi
  local port
  port=$(pg_lsclusters -h | awk -v v="$ver" '$1==v && $2=="main" {print $3}')
  for _ in $(seq 1 50); do
    pg_isready -q -h 127.0.0.1 -p "$port" && break
    sleep 0.2
  done
  pg_isready -h 127.0.0.1 -p "$port" >/dev/null
  # A role for the tests that may create (and drop) one database per test.
  _petrel_as_postgres psql -q -p "$port" -v ON_ERROR_STOP=1 >/dev/null <<'SQL'
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'petrel_test') THEN
    CREATE ROLE petrel_test LOGIN PASSWORD 'petrel_test' CREATEDB;
  END IF;
END $$;
SQL
  export PETREL_TEST_POSTGRES_URL="postgres://petrel_test:petrel_test@127.0.0.1:${port}/postgres"
  echo "services: PostgreSQL $ver on port $port (PETREL_TEST_POSTGRES_URL=$PETREL_TEST_POSTGRES_URL)"
}

petrel_start_postgres
