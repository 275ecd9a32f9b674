#!/usr/bin/env bash
# Make sure PostgreSQL is installed and running on 127.0.0.1:5432, with a role
# for truc's tests and demos that may create databases.
# Idempotent; returns at once when all is in place.
#
#   TRUC_PG_ROLE      role to ensure (default truc_test)
#   TRUC_PG_PASSWORD  its password (default truc_test; tests only: a
#                     production role gets its own secret, in truc.env)
#   TRUC_SKIP_POSTGRES=1 skips everything (a database elsewhere).
#
# Prints the URL to use, e.g. postgres://truc_test:truc_test@127.0.0.1:5432/postgres
set -euo pipefail

HOST=127.0.0.1
PORT=5432
WAIT_SECS=60
ROLE="${TRUC_PG_ROLE:-truc_test}"
PASSWORD="${TRUC_PG_PASSWORD:-truc_test}"

say() { printf 'postgres: %s\n' "$*"; }
die() { printf 'postgres: ERROR: %s\n' "$*" >&2; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }
port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/$HOST/$PORT" 2>/dev/null; }

if [[ "${TRUC_SKIP_POSTGRES:-0}" == "1" ]]; then
    say "TRUC_SKIP_POSTGRES=1, not checking the local database"
    exit 0
fi
[[ "$ROLE" =~ ^[a-z_][a-z0-9_]*$ ]] || die "TRUC_PG_ROLE must be a plain lower-case name"
[[ "$PASSWORD" != *"'"* ]] || die "TRUC_PG_PASSWORD must not contain a quote"

ROOT=()
if [[ "$(id -u)" -ne 0 ]]; then
    have sudo || die "need root (or sudo) to install and start PostgreSQL"
    ROOT=(sudo)
fi
as_root() { ${ROOT[@]+"${ROOT[@]}"} "$@"; }
# psql as the postgres superuser over the local socket (peer auth).
as_postgres() { as_root runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 "$@"; }

export PATH="$PATH:/usr/sbin:/sbin"

# 1. Install.
if ! have pg_lsclusters || ! have psql; then
    say "postgresql not installed; installing with apt-get"
    have apt-get || die "apt-get not found; install PostgreSQL by hand"
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql
fi

# 2. Start the first cluster (Debian creates one on install) unless it runs.
if ! port_open; then
    read -r version name _ < <(pg_lsclusters --no-header | head -n1) \
        || die "no PostgreSQL cluster exists; create one with pg_createcluster"
    say "starting cluster $version/$name"
    if [[ -d /run/systemd/system ]] && have systemctl; then
        as_root systemctl start "postgresql@$version-$name"
    else
        as_root pg_ctlcluster "$version" "$name" start
    fi
    deadline=$((SECONDS + WAIT_SECS))
    until port_open; do
        ((SECONDS < deadline)) || die "PostgreSQL did not listen on $HOST:$PORT within ${WAIT_SECS}s"
        sleep 1
    done
fi
deadline=$((SECONDS + WAIT_SECS))
until as_postgres -c 'select 1' >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "PostgreSQL listens but does not answer queries"
    sleep 1
done

# 3. The role (login, may create databases), with its password.
as_postgres <<SQL
DO \$\$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$ROLE') THEN
    CREATE ROLE $ROLE LOGIN CREATEDB PASSWORD '$PASSWORD';
  ELSE
    ALTER ROLE $ROLE LOGIN CREATEDB PASSWORD '$PASSWORD';
  END IF;
END
\$\$;
SQL
url="postgres://$ROLE:$PASSWORD@$HOST:$PORT/postgres"
PGPASSWORD="$PASSWORD" psql -X -q -h "$HOST" -p "$PORT" -U "$ROLE" -d postgres -c 'select 1' >/dev/null \
    || die "role $ROLE cannot log in over TCP; check pg_hba.conf for host $HOST (md5 or scram-sha-256)"
say "running: $url"
