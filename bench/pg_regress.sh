#!/usr/bin/env bash
# PostgreSQL's own regression suite (parallel_schedule of the installed server's version),
# run with pg_regress --use-existing against one throwaway primary: directly, through pgsluice
# in session mode, through pgsluice in transaction mode, and then, with two streaming replicas,
# through a pgsluice in transaction mode that routes reads to them: once as it is, and once
# under faults (a reload every RELOAD_EVERY seconds, default 3, each changing the pool size,
# and a replica restarted with `pg_ctl restart -m fast` every RESTART_EVERY seconds, default
# 40). Session mode runs twice: as configured by default, and with server_lifetime = 0 (each
# server connection serves one client, as PgBouncer's 0 means). Prints how many of the tests failed each way, which ones fail through pgsluice but not
# directly, and which fail under faults but not without them. The same schedule also runs
# through PgBouncer 1.25.2 in session mode, the yardstick for pgsluice's session mode.
#
#   bench/pg_regress.sh                 # KEEP=1 keeps the work directory (diffs, logs)
#   PGBOUNCER=/path/to/pgbouncer        # else built by PGBOUNCER_BUILD (default: the anchor's
#                                       # build-pgbouncer.sh); PGBOUNCER=none leaves it out
#
# The SQL files come from Debian's source tarball of the installed server version
# (deb.debian.org), downloaded once into target/pg_regress/; regress.so is built from
# regress.c (and contrib/spi's autoinc.c and refint.c, which the triggers test loads) with
# `pg_config --includedir-server` (postgresql-server-dev, installed if missing). pg_regress is the one Debian ships with the
# server. Everything listens on 127.0.0.1 only and is removed at exit.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/common.sh
. "$root/bench/common.sh"

version=$("$bindir/postgres" --version | awk '{print $3}')
major=${version%%.*}
pg_regress=$(pg_config --pkglibdir)/pgxs/src/test/regress/pg_regress
[ -x "$pg_regress" ] || { echo "no pg_regress at $pg_regress (package postgresql-$major)" >&2; exit 1; }

cache="$root/target/pg_regress/$version"
src="$cache/postgresql-$version/src/test/regress"
spi="$cache/postgresql-$version/contrib/spi"
if [ ! -f "$src/parallel_schedule" ] || [ ! -f "$spi/refint.c" ]; then
    mkdir -p "$cache"
    tarball="postgresql-${major}_$version.orig.tar.bz2"
    echo "downloading $tarball ..." >&2
    curl -fsS -o "$cache/$tarball" "http://deb.debian.org/debian/pool/main/p/postgresql-$major/$tarball"
    tar -xjf "$cache/$tarball" -C "$cache" "postgresql-$version/src/test/regress" \
        "postgresql-$version/contrib/spi"
fi

pgbouncer_bin=${PGBOUNCER:-}
if [ -z "$pgbouncer_bin" ]; then
    build=${PGBOUNCER_BUILD:-$root/../shared/anchors/build-pgbouncer.sh}
    [ -x "$build" ] || { echo "no PgBouncer: set PGBOUNCER (or PGBOUNCER=none)" >&2; exit 1; }
    pgbouncer_bin=$("$build" | tail -1)
fi

work=$(mktemp -d /tmp/pgsluice-regress.XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for d in "$work/replica1" "$work/replica2" "$work/data"; do
        [ -d "$d" ] && as_pg "$bindir/pg_ctl" -D "$d" -m immediate stop >/dev/null 2>&1 || true
    done
    if [ -n "${KEEP:-}" ]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

if [ ! -f "$(pg_config --includedir-server)/postgres.h" ]; then
    echo "installing postgresql-server-dev-$major (for regress.so) ..." >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "postgresql-server-dev-$major" >/dev/null
fi
# The tests write their results next to a copy of the sources; the server reads regress.so.
cp -r "$src" "$work/regress"
# The triggers test loads autoinc.so and refint.so from contrib/spi, as `make check` builds them.
# (refint with REFINT_VERBOSE, as contrib/spi's Makefile has it: the expected output holds its
# notices).
for c in "$work/regress/regress.c" "$spi/autoinc.c" "$spi/refint.c"; do
    gcc -O2 -fPIC -shared -DREFINT_VERBOSE -I"$(pg_config --includedir-server)" \
        -o "$work/regress/$(basename "$c" .c).so" "$c"
done
[ "$(id -u)" = 0 ] && chown -R postgres "$work"

echo "building pgsluice (release) ..." >&2
(cd "$root" && cargo build --release -q)

pg_port=$(free_port)
as_pg "$bindir/initdb" -D "$work/data" -U postgres -A trust --no-sync >/dev/null
cat >>"$work/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
unix_socket_directories = '$work'
max_connections = 300
max_prepared_transactions = 10
fsync = off
CONF
as_pg "$bindir/pg_ctl" -D "$work/data" -l "$work/pg.log" -o "-p $pg_port" -w start >/dev/null

# The configuration of a pgsluice in pool mode MODE on PORT, for databases regression and
# postgres on the primary, with servers of POOL connections each, and the settings in
# $sluice_extra, if any.
sluice_config() {
    local mode=$1 port=$2 pool=$3
    cat <<TOML
listen_port = $port
http_listen = ""
auth_type = "trust"
pool_mode = "$mode"
default_pool_size = $pool
max_client_conn = 500
${sluice_extra:-}
[databases.regression]
port = $pg_port
[databases.postgres]
port = $pg_port
[users.postgres]
TOML
}

# One pgsluice NAME (pool mode MODE), on the same primary; its port in $sluice_port and its
# process in $sluice_pid. With a third argument, the replicas of make_replicas serve its
# reads. (Not called in a subshell: the pooler must be this shell's child, for the clean-up
# to stop it.)
start_sluice() {
    local name=$1 mode=$2 routed=${3:-} port
    port=$(free_port)
    sluice_config "$mode" "$port" 60 >"$work/$name.toml"
    if [ -n "$routed" ]; then
        sed -e "s/^port = $pg_port\$/port = $pg_port\nreplicas = [$replica_list]/" \
            "$work/$name.toml" >"$work/$name.routed" && mv "$work/$name.routed" "$work/$name.toml"
    fi
    RUST_LOG=warn "$root/target/release/pgsluice" --config "$work/$name.toml" >"$work/$name.log" 2>&1 &
    sluice_pid=$!
    pids+=($sluice_pid)
    wait_port "$port"
    sluice_port=$port
}

# Faults while a run goes on, until the file $work/faults.stop appears: pgsluice PID is
# reloaded every RELOAD_EVERY seconds, its pool size alternating between 60 and 50, and
# replica1 is restarted every RESTART_EVERY seconds. Counts both in $work/faults.count.
faults() {
    local pid=$1 config=$2 reloads=0 restarts=0 tick=0
    while [ ! -e "$work/faults.stop" ]; do
        sleep 1
        tick=$((tick + 1))
        if [ $((tick % ${RELOAD_EVERY:-3})) = 0 ]; then
            reloads=$((reloads + 1))
            sed -i -E "s/^default_pool_size = .*/default_pool_size = $((reloads % 2 ? 50 : 60))/" "$config"
            kill -HUP "$pid"
        fi
        if [ $((tick % ${RESTART_EVERY:-40})) = 0 ]; then
            restarts=$((restarts + 1))
            as_pg "$bindir/pg_ctl" -D "$work/replica1" -l "$work/replica1.log" -m fast -w restart >/dev/null
        fi
        echo "$reloads reloads, $restarts replica restarts" >"$work/faults.count"
    done
}

# run NAME PORT: the whole schedule against a fresh database `regression`; prints the failed
# tests, one per line, into $work/NAME.failed.
run() {
    local name=$1 port=$2 out="$work/out-$1"
    # What an earlier run left: prepared transactions hold the database.
    "$bindir/psql" -X -h 127.0.0.1 -p "$pg_port" -U postgres -d postgres -Atc \
        "SELECT database || ' ' || gid FROM pg_prepared_xacts" | while read -r db gid; do
        "$bindir/psql" -X -h 127.0.0.1 -p "$pg_port" -U postgres -d "$db" -qc "ROLLBACK PREPARED '$gid'"
    done
    "$bindir/psql" -X -h 127.0.0.1 -p "$pg_port" -U postgres -d postgres -q \
        -c 'DROP DATABASE IF EXISTS regression WITH (FORCE)' -c 'CREATE DATABASE regression' >/dev/null 2>&1
    mkdir -p "$out"
    [ "$(id -u)" = 0 ] && chown postgres "$out"
    (cd "$work/regress" && as_pg "$pg_regress" --use-existing --host=127.0.0.1 --port="$port" \
        --user=postgres --dbname=regression --inputdir=. --outputdir="$out" --dlpath=. \
        --bindir="$bindir" --schedule=parallel_schedule >"$out/summary.txt" 2>&1) || true
    { grep -E '^(not ok|test .* FAILED|     .* FAILED| .*\.\.\. FAILED)' "$out/summary.txt" || true; } |
        sed -E 's/^not ok [0-9]+ +[-+]? *//; s/^ *(test )?//; s/ +\.\.\..*//; s/ +[0-9]+ ms$//' |
        awk '{print $1}' | sort -u >"$work/$name.failed"
    total=$(grep -cE '^(ok|not ok) |\.\.\. (ok|FAILED)' "$out/summary.txt" || true)
    echo "$total" >"$work/$name.total"
}

start_sluice session session
session_port=$sluice_port
# server_lifetime = 0: each server serves one client, so each client is a new server session.
sluice_extra="server_lifetime = 0" start_sluice once session
once_port=$sluice_port
start_sluice transaction transaction
transaction_port=$sluice_port
run direct "$pg_port"
run session "$session_port"
run once "$once_port"
run transaction "$transaction_port"
targets="direct session once transaction"
if [ "$pgbouncer_bin" != none ]; then
    bouncer_port=$(free_port)
    cat >"$work/pgbouncer.ini" <<INI
[databases]
regression = host=127.0.0.1 port=$pg_port
postgres = host=127.0.0.1 port=$pg_port
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $bouncer_port
unix_socket_dir =
auth_type = trust
auth_file = $work/userlist.txt
pool_mode = session
default_pool_size = 60
max_client_conn = 500
max_prepared_statements = 200
logfile = $work/pgbouncer.log
INI
    echo '"postgres" ""' >"$work/userlist.txt"
    [ "$(id -u)" = 0 ] && chown postgres "$work/pgbouncer.ini" "$work/userlist.txt"
    as_pg "$pgbouncer_bin" "$work/pgbouncer.ini" >/dev/null 2>&1 &
    pids+=($!)
    wait_port "$bouncer_port"
    pids+=("$(pgrep -f "^$pgbouncer_bin $work/pgbouncer.ini" | head -1)")
    run pgbouncer "$bouncer_port"
    targets="$targets pgbouncer"
fi

# Two replicas for the routed runs (pg_regress's own databases and roles reach them by WAL).
make_replicas "$work" "$pg_port"
start_sluice routed transaction routed
run routed "$sluice_port"
start_sluice faults transaction routed
faults "$sluice_pid" "$work/faults.toml" &
faults_pid=$!
pids+=($faults_pid)
run faults "$sluice_port"
touch "$work/faults.stop"
wait "$faults_pid" || true

printf '%-12s %7s %7s\n' target tests failed
for name in $targets routed faults; do
    printf '%-12s %7s %7s\n' "$name" "$(cat "$work/$name.total")" "$(wc -l <"$work/$name.failed")"
done
for name in ${targets#direct } routed faults; do
    extra=$(comm -13 "$work/direct.failed" "$work/$name.failed" | tr '\n' ' ')
    echo "$name fails, direct does not: ${extra:-none}"
done
extra=$(comm -13 "$work/routed.failed" "$work/faults.failed" | tr '\n' ' ')
echo "faults ($(cat "$work/faults.count" 2>/dev/null || echo "no faults")) fails, routed does not: ${extra:-none}"
