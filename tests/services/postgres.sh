#!/usr/bin/env bash
# postgres.sh - a throwaway PostgreSQL 15 for tests, without systemd: initdb into RUN_DIR, the
# server on 127.0.0.1 with its unix socket in RUN_DIR, one password user (with CREATEDB, so tests
# can make a database each) and one database.
#
#   postgres.sh start|stop|status RUN_DIR      (the contract is in lib.sh)
#
# Prints PGHOST PGPORT PGUSER PGPASSWORD PGDATABASE (plain psql then needs no arguments),
# DATABASE_URL (asyncpg), PG_SQLALCHEMY_URL (postgresql+asyncpg://), PG_SOCKET_DIR PG_DATA
# PG_RUN_AS. Log: RUN_DIR/pg/postgres.log.
#
# Environment (optional): PG_PORT (default: the previous port when free, else a free one),
# PG_USER PG_PASSWORD PG_DB (moorage), PG_DURABLE=1 (keep fsync and friends on),
# PG_START_TIMEOUT (60 s), PG_NO_INSTALL=1 (never run apt-get).
#
# PostgreSQL refuses to run as root; as root the server runs as the package's postgres user,
# which must be able to reach RUN_DIR, and the socket path must stay under 107 bytes. When either
# fails (pytest's tmp_path is under a 0700 directory) the data goes to a private
# /tmp/pgtest.XXXXXX that RUN_DIR/pg links to; a later start or stop removes such a directory once
# its RUN_DIR is gone and its server is down.
set -euo pipefail
NAME=postgres.sh
# shellcheck source=tests/services/lib.sh
. "$(dirname "$0")/lib.sh"
PKGS=(postgresql-15 postgresql-client-15)

[ $# -eq 2 ] || { echo "usage: $0 start|stop|status RUN_DIR" >&2; exit 2; }
ACTION=$1
case "$ACTION" in start | stop | status) ;; *) echo "usage: $0 start|stop|status RUN_DIR" >&2; exit 2 ;; esac
set_run_dir "$ACTION" "$2"
START_TIMEOUT=${PG_START_TIMEOUT:-60}
PG_USER=${PG_USER:-moorage} PG_PASSWORD=${PG_PASSWORD:-moorage} PG_DB=${PG_DB:-moorage}

if [ "$(id -u)" = 0 ]; then
    RUN_AS=postgres
    as_pg() { runuser -u postgres -- "$@"; }
else
    RUN_AS=$(id -un)
    as_pg() { "$@"; }
fi

find_bin() {
    local d
    for d in /usr/lib/postgresql/15/bin /usr/lib/postgresql/*/bin; do
        if [ -x "$d/pg_ctl" ] && [ -x "$d/initdb" ]; then PG_BIN=$d; return 0; fi
    done
    return 1
}

ensure_installed() {
    if find_bin && command -v psql >/dev/null; then return 0; fi
    [ "${PG_NO_INSTALL:-0}" = 1 ] && die "PostgreSQL missing (apt-get install ${PKGS[*]})"
    # The package would build a "main" cluster we never use: skip it (about 3 s).
    if [ ! -e /etc/postgresql-common/createcluster.conf ]; then
        mkdir -p /etc/postgresql-common/createcluster.d
        echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.d/no-main-cluster.conf
    fi
    apt_install "$RUN_DIR/apt.log" "${PKGS[@]}"
    find_bin || die "no initdb/pg_ctl after install"
}

# BASE (owned by the server's user) holds data/, sock/ and postgres.log.
find_base() {
    if [ -f "$RUN_DIR/pgbase" ]; then BASE=$(cat "$RUN_DIR/pgbase"); else BASE=$RUN_DIR/pg; fi
    [ -d "$BASE" ]
}

make_base() {
    find_base && return 0
    # the socket is BASE/sock/.s.PGSQL.NNNNN
    if [ ${#RUN_DIR} -le 80 ] && { [ "$RUN_AS" != postgres ] || runuser -u postgres -- test -x "$RUN_DIR"; }; then
        BASE=$RUN_DIR/pg
        mkdir -p "$BASE"
    else
        BASE=$(mktemp -d /tmp/pgtest.XXXXXX)
        chmod 755 "$BASE"
        echo "$RUN_DIR" >"$BASE/owner"
        echo "$BASE" >"$RUN_DIR/pgbase"
        ln -sfn "$BASE" "$RUN_DIR/pg"
    fi
    if [ "$RUN_AS" = postgres ]; then chown postgres: "$BASE"; fi
}

# Not pg_ctl status: it takes a killed postmaster that init has not reaped yet for a live one.
running() { pid_from "$BASE/data/postmaster.pid" "$BASE/data" >/dev/null; }

# Fallback bases whose RUN_DIR is gone and whose server is down.
gc_fallbacks() {
    local b
    for b in /tmp/pgtest.*; do
        [ -f "$b/owner" ] || continue
        [ -d "$(cat "$b/owner")" ] && continue
        pid_from "$b/data/postmaster.pid" "$b/data" >/dev/null && continue
        rm -rf "$b"
    done
}

# Up = the server runs and a password login over TCP works.
healthy() {
    [ -s "$RUN_DIR/env" ] && running || return 1
    PGPASSWORD=$(env_get PGPASSWORD) PGCONNECT_TIMEOUT=5 psql -X -q -w -h 127.0.0.1 \
        -p "$(env_get PGPORT)" -U "$(env_get PGUSER)" -d "$(env_get PGDATABASE)" -tAc 'select 1' \
        2>/dev/null | grep -qx 1
}

do_stop() {
    find_bin || return 0
    if find_base && running; then
        local pid
        if ! as_pg "$PG_BIN/pg_ctl" stop -D "$BASE/data" -m fast -w -t 30 >/dev/null 2>&1; then
            # pg_ctl gave up: kill the postmaster, once sure it is the one of this RUN_DIR
            if pid=$(pid_from "$BASE/data/postmaster.pid" "$BASE/data"); then kill -KILL "$pid" 2>/dev/null || true; fi
        fi
    fi
    gc_fallbacks
}

do_start() {
    ensure_installed
    gc_fallbacks
    make_base
    if healthy; then cat "$RUN_DIR/env"; return 0; fi
    local port=${PG_PORT:-}
    # shellcheck disable=SC2046
    [ -n "$port" ] || port=$(pick_ports 1 $(env_get PGPORT))
    if [ ! -f "$BASE/data/PG_VERSION" ]; then
        rm -rf "$BASE/data"
        as_pg "$PG_BIN/initdb" -D "$BASE/data" -U postgres -E UTF8 --locale=C.UTF-8 \
            --auth-local=peer --auth-host=scram-sha-256 --no-sync >"$RUN_DIR/initdb.log" 2>&1 \
            || { cat "$RUN_DIR/initdb.log" >&2; die "initdb failed"; }
    fi
    as_pg mkdir -p "$BASE/sock"
    local fast="fsync = off
synchronous_commit = off
full_page_writes = off"
    [ "${PG_DURABLE:-0}" = 1 ] && fast="# PG_DURABLE=1: fsync and friends stay on"
    # test data is thrown away: durability off unless PG_DURABLE=1
    as_pg tee "$BASE/data/postgresql.auto.conf" >/dev/null <<CONF
# written by postgres.sh on each start
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$BASE/sock'
max_connections = 200
password_encryption = 'scram-sha-256'
log_min_messages = warning
$fast
CONF
    # The lock files of a killed server make PostgreSQL refuse to start while its pid exists,
    # and a zombie's pid does until init reaps it.
    if [ -f "$BASE/data/postmaster.pid" ] && ! running; then
        rm -f "$BASE/data/postmaster.pid" "$BASE"/sock/.s.PGSQL.*
    fi
    if ! running; then
        as_pg "$PG_BIN/pg_ctl" start -D "$BASE/data" -l "$BASE/postgres.log" -w -t "$START_TIMEOUT" \
            >/dev/null 2>&1 \
            || { tail -n 20 "$BASE/postgres.log" >&2; die "pg_ctl start failed; log: $BASE/postgres.log"; }
    fi
    # user and database, idempotently, over the socket as the superuser (peer auth)
    as_pg psql -X -q -v ON_ERROR_STOP=1 -v u="$PG_USER" -v p="$PG_PASSWORD" -v d="$PG_DB" \
        -h "$BASE/sock" -p "$port" -U postgres -d postgres >/dev/null <<'SQL' || die "creating the user and database failed"
SELECT format('CREATE ROLE %I LOGIN', :'u') WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'u') \gexec
SELECT format('ALTER ROLE %I WITH LOGIN CREATEDB PASSWORD %L', :'u', :'p') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'d', :'u') WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'d') \gexec
SQL
    cat >"$RUN_DIR/env.new" <<ENV
PGHOST=127.0.0.1
PGPORT=$port
PGUSER=$PG_USER
PGPASSWORD=$PG_PASSWORD
PGDATABASE=$PG_DB
DATABASE_URL=postgresql://$PG_USER:$PG_PASSWORD@127.0.0.1:$port/$PG_DB
PG_SQLALCHEMY_URL=postgresql+asyncpg://$PG_USER:$PG_PASSWORD@127.0.0.1:$port/$PG_DB
PG_SOCKET_DIR=$BASE/sock
PG_DATA=$BASE/data
PG_RUN_AS=$RUN_AS
ENV
    mv "$RUN_DIR/env.new" "$RUN_DIR/env"
    healthy || die "the server is up but a password login over TCP failed"
    cat "$RUN_DIR/env"
}

case "$ACTION" in
    start) do_start ;;
    stop) do_stop ;;
    status) find_bin && find_base && healthy && cat "$RUN_DIR/env" || exit 1 ;;
esac
