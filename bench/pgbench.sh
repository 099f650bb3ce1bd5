#!/usr/bin/env bash
# pgsluice against PgBouncer 1.25, side by side in one run on this machine: the same pool size,
# transaction mode, SCRAM-SHA-256 clients for both, PgBouncer with max_prepared_statements = 200.
# Prints, for every pgbench case, each pooler's TPS and CPU time per transaction (the pooler's
# /proc utime+stime over the run, divided by the transactions it served) with the ratios; then
# latency p50/p99/max from pgbench --log; then latency with 10,000 clients connected and 64
# busy (benches/many_clients.rs), and PostgreSQL's own with only the 64 connected; then each
# pooler's RSS holding many idle logged-in clients (idle for IDLE_SETTLE seconds: pgsluice
# parks a client idle for 250 to 500 ms, one fresh from its login sooner), and again
# once they are idle again after each ran one query with a 64 kB result; then pgsluice's CPU
# per transaction with two streaming replicas against the primary only.
#
#   bench/pgbench.sh                      # defaults below
#   DURATION=8 ROUNDS=3 POOL_SIZE=20 SCALE=10 bench/pgbench.sh
#   CASES=$'64|-S -M simple\n64|-S -M prepared'    # "clients|pgbench options", one per line
#   LATENCY_CLIENTS="64 1000" IDLE_CLIENTS="2000 10000" ROUTED_CLIENTS="64"  ("" skips each)
#   MANY_CLIENTS="10000/64" MANY_SECONDS=20   # connected/busy ("" skips it)
#   SLUICE_SETTINGS='workers = 2'          # more top-level settings for pgsluice
#   PGBOUNCER=/path/to/pgbouncer          # else built by PGBOUNCER_BUILD, a script that prints
#                                         # the binary's path (default: build-pgbouncer.sh in
#                                         # ../shared/anchors beside this checkout)
#
# Rounds are interleaved, and which pooler goes first alternates, so drift hits both alike;
# each figure is the median of ROUNDS. Every run is bounded (-T), everything listens on
# 127.0.0.1 only, and all of it is removed at exit.
set -euo pipefail

DURATION=${DURATION:-8}
ROUNDS=${ROUNDS:-3}
POOL_SIZE=${POOL_SIZE:-20}
SCALE=${SCALE:-10}
CASES=${CASES-"1|-S -M simple
16|-S -M simple
64|-S -M simple
256|-S -M simple
64|-S -M extended
64|-S -M prepared
64|-b tpcb-like -M simple
16|-S -M simple -C"}
LATENCY_CLIENTS=${LATENCY_CLIENTS-"64 1000"}
IDLE_CLIENTS=${IDLE_CLIENTS-"2000 10000"}
IDLE_SETTLE=${IDLE_SETTLE:-3}
# "connected/busy": that many clients logged in, so many at a time running -S (benches/many_clients.rs)
MANY_CLIENTS=${MANY_CLIENTS-"10000/64"}
MANY_SECONDS=${MANY_SECONDS:-20}
ROUTED_CLIENTS=${ROUTED_CLIENTS-64}
SLUICE_SETTINGS=${SLUICE_SETTINGS-}
PASSWORD=bench-secret
export PGPASSWORD=$PASSWORD

root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/common.sh
. "$root/bench/common.sh"

pgbouncer_bin=${PGBOUNCER:-}
if [ -z "$pgbouncer_bin" ]; then
    build=${PGBOUNCER_BUILD:-$root/../shared/anchors/build-pgbouncer.sh}
    [ -x "$build" ] || { echo "no PgBouncer: set PGBOUNCER or PGBOUNCER_BUILD" >&2; exit 1; }
    pgbouncer_bin=$("$build" | tail -1)
fi
"$pgbouncer_bin" --version | head -1 >&2

ulimit -n "$(ulimit -Hn)"
max_idle=0
for n in $IDLE_CLIENTS $LATENCY_CLIENTS ${MANY_CLIENTS%%/*}; do [ "$n" -gt "$max_idle" ] && max_idle=$n; done
max_clients=$((max_idle + 500))
hz=$(getconf CLK_TCK)

work=$(mktemp -d /tmp/pgsluice-bench.XXXXXX)
chmod 755 "$work"
[ "$(id -u)" = 0 ] && chown postgres "$work"
stop_also="$pgbouncer_bin $work/pgbouncer.ini"
trap cleanup EXIT
build_sluice

pg_port=$(free_port)
start_primary "$work" "$pg_port" 300 "$SCALE"

bouncer_port=$(free_port)
cat >"$work/pgbouncer.ini" <<INI
[databases]
postgres = host=127.0.0.1 port=$pg_port
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $bouncer_port
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $work/userlist.txt
pool_mode = transaction
default_pool_size = $POOL_SIZE
max_client_conn = $max_clients
max_prepared_statements = 200
logfile = $work/pgbouncer.log
INI
echo "\"postgres\" \"$PASSWORD\"" >"$work/userlist.txt"
[ "$(id -u)" = 0 ] && chown postgres "$work"/pgbouncer.ini "$work"/userlist.txt

sluice_port=$(free_port)
cat >"$work/pgsluice.toml" <<TOML
listen_port = $sluice_port
http_listen = ""
auth_type = "scram-sha-256"
pool_mode = "transaction"
default_pool_size = $POOL_SIZE
max_client_conn = $max_clients
$SLUICE_SETTINGS
[databases.postgres]
port = $pg_port
[users.postgres]
password = "$PASSWORD"
TOML

# start_bouncer / start_sluice: a fresh process, its pid in bouncer_pid / sluice_pid.
start_bouncer() {
    # runuser's login session lowers the limit on open files again: raise it, or PgBouncer
    # stops accepting at about 1,000 clients.
    as_pg bash -c 'ulimit -n "$(ulimit -Hn)" && exec "$0" "$1"' "$pgbouncer_bin" "$work/pgbouncer.ini" \
        >/dev/null 2>&1 &
    pids+=($!)
    disown $!
    wait_port "$bouncer_port"
    bouncer_pid=$(pgrep -f "^$pgbouncer_bin $work/pgbouncer.ini" | head -1)
}
start_sluice() {
    RUST_LOG=warn "$root/target/release/pgsluice" --config "$work/$1.toml" >>"$work/$1.log" 2>&1 &
    sluice_pid=$!
    pids+=("$sluice_pid")
    disown "$sluice_pid"
    wait_port "$(awk '/^listen_port/ {print $3}' "$work/$1.toml")"
}
# stop PID: ends a pooler at once and waits until it is gone.
stop() {
    kill -9 "$1" 2>/dev/null || true
    while kill -0 "$1" 2>/dev/null; do sleep 0.05; done
}
start_bouncer
start_sluice pgsluice

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
median() { sort -n | awk '{a[NR]=$0} END {print a[int((NR+1)/2)]}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b > 0) printf "%.2f", a / b; else print "-"}'; }

# run PORT PID CLIENTS OPTIONS [EXTRA]: one pgbench run through a pooler; prints
# "tps cpu_us_per_txn".
run() {
    local port=$1 pid=$2 clients=$3 opts=$4 extra=${5:-} before after out
    local jobs=$((clients < 2 ? 1 : 2))
    before=$(ticks "$pid")
    # shellcheck disable=SC2086
    out=$(timeout $((DURATION + 300)) "$bindir/pgbench" -h 127.0.0.1 -p "$port" -U postgres -n $opts $extra -c "$clients" -j "$jobs" \
        -T "$DURATION" postgres 2>&1) || { echo "pgbench failed: $(echo "$out" | tail -3)" >&2; }
    after=$(ticks "$pid")
    echo "$out" | awk -v t=$((after - before)) -v hz="$hz" '
        /^number of transactions actually processed/ {split($0, p, ": "); n = p[2] + 0}
        /^tps/ {tps = $3}
        END {if (n > 0) printf "%.0f %.1f\n", tps, t * 1e6 / hz / n; else print "0 0"}'
}

# rounds A PORT_A PID_A B PORT_B PID_B CLIENTS OPTIONS: ROUNDS runs through each of two
# poolers into $work/A and $work/B, which goes first alternating.
rounds() {
    local r
    : >"$work/$1" >"$work/$4"
    for r in $(seq "$ROUNDS"); do
        if [ $((r % 2)) = 1 ]; then
            run "$2" "$3" "$7" "$8" >>"$work/$1"
            run "$5" "$6" "$7" "$8" >>"$work/$4"
        else
            run "$5" "$6" "$7" "$8" >>"$work/$4"
            run "$2" "$3" "$7" "$8" >>"$work/$1"
        fi
    done
}

echo
printf '%-28s %7s | %11s %8s | %11s %8s | %9s %9s\n' \
    case clients bouncer_tps cpu_us sluice_tps cpu_us tps_ratio cpu_ratio
while IFS='|' read -r clients opts; do
    [ -n "$clients" ] || continue
    rounds bouncer "$bouncer_port" "$bouncer_pid" sluice "$sluice_port" "$sluice_pid" "$clients" "$opts"
    b_tps=$(cut -d' ' -f1 "$work/bouncer" | median); b_cpu=$(cut -d' ' -f2 "$work/bouncer" | median)
    s_tps=$(cut -d' ' -f1 "$work/sluice" | median); s_cpu=$(cut -d' ' -f2 "$work/sluice" | median)
    printf '%-28s %7s | %11s %8s | %11s %8s | %9s %9s\n' "$opts" "$clients" "$b_tps" "$b_cpu" \
        "$s_tps" "$s_cpu" "$(ratio "$s_tps" "$b_tps")" "$(ratio "$s_cpu" "$b_cpu")"
done <<<"$CASES"

# Latency of every transaction of one run (pgbench --log), per pooler.
if [ -n "$LATENCY_CLIENTS" ]; then
    echo
    printf '%-8s %7s | %8s %8s %8s | %8s %8s %8s | %9s %9s\n' \
        case clients b_p50_ms p99 max s_p50_ms p99 max p99_ratio max_ratio
    for c in $LATENCY_CLIENTS; do
        for target in bouncer sluice; do
            rm -f "$work"/lat.*
            if [ $target = bouncer ]; then port=$bouncer_port pid=$bouncer_pid; else port=$sluice_port pid=$sluice_pid; fi
            run "$port" "$pid" "$c" "-S -M simple" "--log --log-prefix=$work/lat" >/dev/null
            cat "$work"/lat.* | awk '{print $3}' | sort -n |
                awk '{a[NR] = $1} END {printf "%.2f %.2f %.2f\n", a[int(NR * 0.5)] / 1000, a[int(NR * 0.99)] / 1000, a[NR] / 1000}' \
                    >"$work/lat_$target"
        done
        read -r b50 b99 bmax <"$work/lat_bouncer"
        read -r s50 s99 smax <"$work/lat_sluice"
        printf '%-8s %7s | %8s %8s %8s | %8s %8s %8s | %9s %9s\n' -S "$c" "$b50" "$b99" "$bmax" \
            "$s50" "$s99" "$smax" "$(ratio "$s99" "$b99")" "$(ratio "$smax" "$bmax")"
    done
fi

# Many clients connected and a few busy: each transaction takes the client that has waited
# longest, so every client idles between its transactions (pgsluice parks it meanwhile).
if [ -n "$MANY_CLIENTS" ]; then
    echo
    (cd "$root" && cargo bench --bench many_clients --no-run -q 2>/dev/null)
    printf '%-8s %12s | %8s %8s %8s %8s | %8s %8s %8s %8s | %9s\n' \
        case clients b_txns p50_ms p99 p99/p50 s_txns p50_ms p99 p99/p50 p99_ratio
    for m in $MANY_CLIENTS; do
        for target in bouncer sluice; do
            if [ $target = bouncer ]; then port=$bouncer_port; else port=$sluice_port; fi
            (cd "$root" && timeout $((MANY_SECONDS + 900)) cargo bench -q --bench many_clients -- \
                "$port" "${m%%/*}" "${m##*/}" "$MANY_SECONDS" 2>/dev/null) >"$work/many_$target" ||
                { echo "many clients through $target failed" >&2; exit 1; }
        done
        read -r bn b50 b99 _ <"$work/many_bouncer"
        read -r sn s50 s99 _ <"$work/many_sluice"
        printf '%-8s %12s | %8s %8s %8s %8s | %8s %8s %8s %8s | %9s\n' -S "$m" "$bn" "$b50" "$b99" \
            "$(ratio "$b99" "$b50")" "$sn" "$s50" "$s99" "$(ratio "$s99" "$s50")" "$(ratio "$s99" "$b99")"
        # The floor: PostgreSQL itself with only the busy clients connected, no pooler. Its
        # p99/p50 is this machine's (two cores shared by client, server and pooler).
        busy=${m##*/}
        (cd "$root" && timeout $((MANY_SECONDS + 900)) cargo bench -q --bench many_clients -- \
            "$pg_port" "$busy" "$busy" "$MANY_SECONDS" 2>/dev/null) >"$work/many_direct" ||
            { echo "many clients straight to PostgreSQL failed" >&2; exit 1; }
        read -r dn d50 d99 _ <"$work/many_direct"
        printf '%-8s %12s | %8s %8s %8s %8s | PostgreSQL itself, no pooler\n' direct "$busy/$busy" \
            "$dn" "$d50" "$d99" "$(ratio "$d99" "$d50")"
    done
fi

# Idle clients: fresh processes, so that memory the load above left behind does not hide what
# an idle client costs. RSS before, with all logged in, and after each ran one query with a
# 64 kB result (buffers a burst grows must be given back when the client is idle again).
if [ -n "$IDLE_CLIENTS" ]; then
    echo
    printf '%-8s %7s | %10s | %10s %8s | %10s %8s | %10s\n' \
        pooler clients start_kib idle_kib B/client burst_kib B/client peak_kib
    for n in $IDLE_CLIENTS; do
        for target in bouncer sluice; do
            if [ $target = bouncer ]; then
                stop "$bouncer_pid"; start_bouncer; pid=$bouncer_pid port=$bouncer_port
            else
                stop "$sluice_pid"; start_sluice pgsluice; pid=$sluice_pid port=$sluice_port
            fi
            before=$(rss_kib "$pid")
            coproc HOLD { python3 "$root/bench/hold_idle.py" "$port" "$n" "$PASSWORD" 2>&1; }
            read -r -t 600 line <&"${HOLD[0]}" || line=timeout
            [ "$line" = ready ] || { echo "holding $n clients on $target: $line" >&2; exit 1; }
            sleep "$IDLE_SETTLE"
            idle=$(rss_kib "$pid")
            echo go >&"${HOLD[1]}"
            read -r -t 600 line <&"${HOLD[0]}" || line=timeout
            [ "$line" = "idle again" ] || { echo "burst through $target: $line" >&2; exit 1; }
            sleep "$IDLE_SETTLE"
            burst=$(rss_kib "$pid")
            peak=$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status")
            echo done >&"${HOLD[1]}"
            wait "$HOLD_PID" 2>/dev/null || true
            printf '%-8s %7s | %10s | %10s %8s | %10s %8s | %10s\n' "$target" "$n" "$before" \
                "$idle" $(((idle - before) * 1024 / n)) "$burst" $(((burst - before) * 1024 / n)) "$peak"
        done
    done
fi

[ -n "$ROUTED_CLIENTS" ] || exit 0

# Routing's cost: pgsluice with two streaming replicas of the same primary against pgsluice with
# the primary only, CPU per -S transaction. The replicas share this machine's cores, so TPS says
# little here; the CPU per transaction is the classifier's and the router's price.
routed_port=$(free_port)
start_replicas "$work" "$pg_port" "$work/pgsluice.toml" "$work/routed.toml" "$routed_port"
primary_pid=$sluice_pid
start_sluice routed
routed_pid=$sluice_pid
echo
printf '%-8s %7s | %11s %8s | %11s %8s | %9s\n' case clients primary_tps cpu_us routed_tps cpu_us cpu_ratio
for c in $ROUTED_CLIENTS; do
    rounds primary_only "$sluice_port" "$primary_pid" routed "$routed_port" "$routed_pid" "$c" "-S -M simple"
    p_tps=$(cut -d' ' -f1 "$work/primary_only" | median); p_cpu=$(cut -d' ' -f2 "$work/primary_only" | median)
    r_tps=$(cut -d' ' -f1 "$work/routed" | median); r_cpu=$(cut -d' ' -f2 "$work/routed" | median)
    printf '%-8s %7s | %11s %8s | %11s %8s | %9s\n' -S "$c" "$p_tps" "$p_cpu" "$r_tps" "$r_cpu" \
        "$(ratio "$r_cpu" "$p_cpu")"
done
