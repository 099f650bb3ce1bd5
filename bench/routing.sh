#!/usr/bin/env bash
# What routing and session-following cost, through pgsluice alone (bench/pgbench.sh compares it
# with PgBouncer): pgbench -S in simple and prepared mode through pgsluice against direct
# connections; what following clients' settings costs; then pgbench -S through pgsluice with
# two streaming replicas against pgsluice with the primary only, then what read_your_writes
# costs there (TPC-B and -S, on against off).
#
#   bench/routing.sh                      # defaults below
#   CLIENTS="16 64" DURATION=10 ROUNDS=5 POOL_SIZE=20 bench/routing.sh
#   CLIENTS=""           skips the direct comparison
#   REPLICA_CLIENTS=""   skips the replica case (default "64")
#   SETTINGS_CLIENTS=""  skips the settings case (default "16": clients with no SET, the same
#                        three settings each, or three settings of their own)
#
# Every run is bounded (-T), everything listens on 127.0.0.1 only, and all of it is removed at
# exit.
set -euo pipefail

CLIENTS=${CLIENTS-"1 16 64"}
MODES=${MODES:-"simple prepared"}
DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
POOL_SIZE=${POOL_SIZE:-20}
SCALE=${SCALE:-1}
REPLICA_CLIENTS=${REPLICA_CLIENTS-64}
SETTINGS_CLIENTS=${SETTINGS_CLIENTS-16}

root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/common.sh
. "$root/bench/common.sh"

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
work=$(mktemp -d /tmp/pgsluice-bench.XXXXXX)
chmod 755 "$work"
[ "$(id -u)" = 0 ] && chown postgres "$work"
trap cleanup EXIT
build_sluice

pg_port=$(free_port)
start_primary "$work" "$pg_port" 600 "$SCALE"

sluice_port=$(free_port)
cat >"$work/pgsluice.toml" <<TOML
listen_port = $sluice_port
http_listen = ""
auth_type = "trust"
pool_mode = "transaction"
default_pool_size = $POOL_SIZE
max_client_conn = 1000
[databases.postgres]
port = $pg_port
[users.postgres]
TOML
RUST_LOG=warn "$root/target/release/pgsluice" --config "$work/pgsluice.toml" >"$work/pgsluice.log" 2>&1 &
pids+=($!)
wait_port "$sluice_port"

# One pgbench run: prints "tps latency_ms". The fourth argument picks the script: -S (the
# default, select-only) or "-b tpcb-like" (TPC-B, writes).
run() {
    local port=$1 mode=$2 clients=$3 script=${4:--S}
    local jobs=$((clients < 2 ? 1 : 2))
    # shellcheck disable=SC2086
    "$bindir/pgbench" -h 127.0.0.1 -p "$port" -U postgres -n $script -M "$mode" -c "$clients" -j "$jobs" \
        -T "$DURATION" postgres 2>&1 |
        awk '/^latency average/ {lat=$4} /^tps/ {tps=$3} END {printf "%.0f %.3f\n", tps, lat}'
}

# Median of ROUNDS runs, rounds interleaved across targets so drift hits all alike.
median() { sort -n | awk '{a[NR]=$0} END {print a[int((NR+1)/2)]}'; }

[ -n "$CLIENTS" ] && printf '%-8s %7s | %10s %8s | %10s %8s | %9s\n' \
    mode clients direct_tps lat_ms sluice_tps lat_ms vs_direct
for mode in $MODES; do
    for c in $CLIENTS; do
        : >"$work/direct" >"$work/sluice"
        for _ in $(seq "$ROUNDS"); do
            run "$pg_port" "$mode" "$c" >>"$work/direct"
            run "$sluice_port" "$mode" "$c" >>"$work/sluice"
        done
        read -r d_tps d_lat < <(median <"$work/direct")
        read -r s_tps s_lat < <(median <"$work/sluice")
        vs_d=$(awk -v s="$s_tps" -v d="$d_tps" 'BEGIN {printf "%.2fx", s / d}')
        printf '%-8s %7s | %10s %8s | %10s %8s | %9s\n' "$mode" "$c" "$d_tps" "$d_lat" "$s_tps" "$s_lat" "$vs_d"
    done
done

# Settings: what following each client's settings costs. Every client runs as a pgbench process
# of its own (-c 1), so that each can have its own startup settings; the three cases differ
# only in those: none, the same three for every client (a server already in line costs one
# comparison), or three of its own (a server coming from another client is brought in line
# first, one round trip). Total TPS of all, median of ROUNDS, interleaved.
run_each() {
    local kind=$1 clients=$2 i opts
    # The pgbench processes are this subshell's children: it waits for them, not for the
    # poolers the script started.
    (for i in $(seq "$clients"); do
        case $kind in
        none) opts="" ;;
        same) opts="-c work_mem=8MB -c search_path=public -c statement_timeout=30s" ;;
        own) opts="-c work_mem=$((i + 4))MB -c search_path=public -c statement_timeout=$((i + 30))s" ;;
        esac
        PGOPTIONS=$opts "$bindir/pgbench" -h 127.0.0.1 -p "$sluice_port" -U postgres -n -S -M simple \
            -c 1 -T "$DURATION" postgres 2>&1 | awk '/^tps/ {print $3}' &
    done
    wait) | awk '{t += $1} END {printf "%.0f\n", t}'
}
if [ -n "$SETTINGS_CLIENTS" ]; then
    echo
    printf '%-8s | %10s | %10s %8s | %10s %8s\n' clients no_set_tps same3_tps ratio own3_tps ratio
    for c in $SETTINGS_CLIENTS; do
        : >"$work/none" >"$work/same" >"$work/own"
        for _ in $(seq "$ROUNDS"); do
            for kind in none same own; do run_each "$kind" "$c" >>"$work/$kind"; done
        done
        n=$(median <"$work/none"); m=$(median <"$work/same"); o=$(median <"$work/own")
        printf '%-8s | %10s | %10s %8s | %10s %8s\n' "$c" "$n" \
            "$m" "$(awk -v a="$m" -v b="$n" 'BEGIN {printf "%.2fx", a / b}')" \
            "$o" "$(awk -v a="$o" -v b="$n" 'BEGIN {printf "%.2fx", a / b}')"
    done
fi

[ -n "$REPLICA_CLIENTS" ] || exit 0

# Routing: two streaming replicas of the same primary, all on this machine. They share its
# cores with the primary, so this measures what routing costs and what spreading reads over
# three servers gives on one box, not what separate replica hosts would add.
routed_port=$(free_port)
start_replicas "$work" "$pg_port" "$work/pgsluice.toml" "$work/routed.toml" "$routed_port"
RUST_LOG=warn "$root/target/release/pgsluice" --config "$work/routed.toml" >"$work/routed.log" 2>&1 &
pids+=($!)
wait_port "$routed_port"
# The same with read_your_writes off: what learning each write's WAL position costs.
ryw_off_port=$(free_port)
sed -e "s/^listen_port = .*/listen_port = $ryw_off_port\nread_your_writes = \"off\"/" \
    "$work/routed.toml" >"$work/ryw_off.toml"
RUST_LOG=warn "$root/target/release/pgsluice" --config "$work/ryw_off.toml" >"$work/ryw_off.log" 2>&1 &
pids+=($!)
wait_port "$ryw_off_port"

echo
printf '%-8s %7s | %12s %8s | %12s %8s | %9s\n' \
    mode clients primary_tps lat_ms replicas_tps lat_ms "vs_primary"
for c in $REPLICA_CLIENTS; do
    : >"$work/primary_only" >"$work/routed"
    for _ in $(seq "$ROUNDS"); do
        run "$sluice_port" simple "$c" >>"$work/primary_only"
        run "$routed_port" simple "$c" >>"$work/routed"
    done
    read -r p_tps p_lat < <(median <"$work/primary_only")
    read -r r_tps r_lat < <(median <"$work/routed")
    printf '%-8s %7s | %12s %8s | %12s %8s | %9s\n' simple "$c" "$p_tps" "$p_lat" "$r_tps" "$r_lat" \
        "$(awk -v r="$r_tps" -v p="$p_tps" 'BEGIN {printf "%.2fx", r / p}')"
done

# Read-your-writes: TPC-B (every transaction writes, so each is followed by a query for the
# primary's WAL position) and -S (reads with no write before them) through the routed pgsluice,
# with read_your_writes on (the default) against off.
echo
printf '%-22s %7s | %12s %8s | %12s %8s | %9s\n' \
    script clients ryw_off_tps lat_ms ryw_on_tps lat_ms "on_vs_off"
for c in $REPLICA_CLIENTS; do
    for spec in "simple tpcb-like" "prepared tpcb-like" "simple select-only"; do
        read -r mode script <<<"$spec"
        : >"$work/ryw_off" >"$work/ryw_on"
        for r in $(seq "$ROUNDS"); do
            # Each goes first in every other round: neither gains from the order.
            if [ $((r % 2)) = 1 ]; then
                run "$ryw_off_port" "$mode" "$c" "-b $script" >>"$work/ryw_off"
                run "$routed_port" "$mode" "$c" "-b $script" >>"$work/ryw_on"
            else
                run "$routed_port" "$mode" "$c" "-b $script" >>"$work/ryw_on"
                run "$ryw_off_port" "$mode" "$c" "-b $script" >>"$work/ryw_off"
            fi
        done
        read -r f_tps f_lat < <(median <"$work/ryw_off")
        read -r o_tps o_lat < <(median <"$work/ryw_on")
        printf '%-22s %7s | %12s %8s | %12s %8s | %9s\n' "$script -M $mode" "$c" "$f_tps" "$f_lat" "$o_tps" "$o_lat" \
            "$(awk -v o="$o_tps" -v f="$f_tps" 'BEGIN {printf "%.2fx", o / f}')"
    done
done
