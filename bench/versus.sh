#!/usr/bin/env bash
# Two builds of pgsluice side by side, in one run on this machine: pgbench -S in simple and
# prepared mode through each (same pool, transaction mode, rounds interleaved so drift hits
# both alike; median TPS and median CPU µs per transaction of the pooler process), then callgrind's instructions per transaction of each (pgbench -S,
# 1 client; the difference of two runs of different lengths, so start-up and login drop out).
# For changes that must not make pgsluice slower: report the new/old ratios.
#
#   bench/versus.sh OLD [NEW]   OLD and NEW: a pgsluice binary, or a git revision that is
#                               built in a temporary worktree; NEW defaults to this tree
#   CLIENTS="1 16 64" DURATION=5 ROUNDS=3 POOL_SIZE=20 CG_TXNS=2000 bench/versus.sh HEAD~3
#   CG_TXNS=0 skips the callgrind part (needs valgrind).
#
# Every run is bounded (-T, -t), everything listens on 127.0.0.1 only, and all of it is
# removed at exit.
set -euo pipefail

CLIENTS=${CLIENTS:-"1 16 64"}
MODES=${MODES:-"simple prepared"}
DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
POOL_SIZE=${POOL_SIZE:-20}
CG_TXNS=${CG_TXNS:-2000}

[ $# -ge 1 ] || { sed -n '2,13p' "$0" >&2; exit 2; }
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/common.sh
. "$root/bench/common.sh"

work=$(mktemp -d /tmp/pgsluice-versus.XXXXXX)
chmod 755 "$work"
[ "$(id -u)" = 0 ] && chown postgres "$work"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -d "$work/data" ] && as_pg "$bindir/pg_ctl" -D "$work/data" -m immediate stop >/dev/null 2>&1 || true
    for t in "$work"/tree-*; do [ -d "$t" ] && git -C "$root" worktree remove --force "$t" >/dev/null 2>&1 || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# A binary for OLD or NEW: the path itself, or a revision built in a worktree of its own.
binary() {
    local what=$1 name=$2
    if [ -x "$what" ] && [ -f "$what" ]; then
        echo "$what"
        return
    fi
    local tree="$work/tree-$name"
    git -C "$root" worktree add --detach -q "$tree" "$what" >&2
    echo "building $what (release) ..." >&2
    (cd "$tree" && CARGO_TARGET_DIR="$root/target/versus-$name" cargo build --release -q) >&2
    echo "$root/target/versus-$name/release/pgsluice"
}
old=$(binary "$1" old)
if [ $# -ge 2 ]; then
    new=$(binary "$2" new)
else
    echo "building this tree (release) ..." >&2
    (cd "$root" && cargo build --release -q)
    new="$root/target/release/pgsluice"
fi

pg_port=$(free_port)
start_primary "$work" "$pg_port" 300 1

# Writes a configuration for `name` listening on `port`.
config() {
    cat >"$work/$1.toml" <<TOML
listen_port = $2
http_listen = ""
auth_type = "trust"
pool_mode = "transaction"
default_pool_size = $POOL_SIZE
max_client_conn = 1000
[databases.postgres]
port = $pg_port
[users.postgres]
TOML
}

old_port=$(free_port)
new_port=$(free_port)
config old "$old_port"
config new "$new_port"
RUST_LOG=warn "$old" --config "$work/old.toml" >"$work/old.log" 2>&1 &
old_pid=$!
pids+=("$old_pid")
RUST_LOG=warn "$new" --config "$work/new.toml" >"$work/new.log" 2>&1 &
new_pid=$!
pids+=("$new_pid")
wait_port "$old_port"
wait_port "$new_port"

# CPU time (user + system) `pid` has used, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

# One pgbench run through the pooler `pid` listening on `port`: prints "tps latency_ms
# cpu_us_per_txn".
run() {
    local port=$1 pid=$2 mode=$3 clients=$4
    local jobs=$((clients < 2 ? 1 : 2))
    # -j = -c in prepared mode: pgbench's synchronous prepare needs a thread per client
    # through a transaction pooler.
    [ "$mode" = prepared ] && jobs=$clients
    local before after
    before=$(cpu_ticks "$pid")
    "$bindir/pgbench" -h 127.0.0.1 -p "$port" -U postgres -n -S -M "$mode" -c "$clients" -j "$jobs" \
        -T "$DURATION" postgres >"$work/pgbench.out" 2>&1
    after=$(cpu_ticks "$pid")
    awk -v ticks=$((after - before)) -v hz="$hz" '
        /^latency average/ {lat=$4} /^tps/ {tps=$3}
        /^number of transactions actually processed/ {n=$NF; sub(/\/.*/, "", n)}
        END {printf "%.0f %.3f %.1f\n", tps, lat, (n > 0 ? ticks * 1e6 / hz / n : 0)}' "$work/pgbench.out"
}
# The median of column `col` of the lines on stdin.
median() { sort -n -k"$1" | awk -v c="$1" '{a[NR]=$c} END {print a[int((NR+1)/2)]}'; }

printf '%-8s %7s | %9s %7s %7s | %9s %7s %7s | %8s %8s\n' mode clients old_tps lat_ms cpu_us \
    new_tps lat_ms cpu_us tps_n/o cpu_n/o
for mode in $MODES; do
    for c in $CLIENTS; do
        : >"$work/r.old" >"$work/r.new"
        for i in $(seq "$ROUNDS"); do
            # Alternate which goes first, so neither always runs on a warmer machine.
            if [ $((i % 2)) = 1 ]; then
                run "$old_port" "$old_pid" "$mode" "$c" >>"$work/r.old"
                run "$new_port" "$new_pid" "$mode" "$c" >>"$work/r.new"
            else
                run "$new_port" "$new_pid" "$mode" "$c" >>"$work/r.new"
                run "$old_port" "$old_pid" "$mode" "$c" >>"$work/r.old"
            fi
        done
        o_tps=$(median 1 <"$work/r.old") o_lat=$(median 2 <"$work/r.old") o_cpu=$(median 3 <"$work/r.old")
        n_tps=$(median 1 <"$work/r.new") n_lat=$(median 2 <"$work/r.new") n_cpu=$(median 3 <"$work/r.new")
        ratio() { awk -v n="$1" -v o="$2" 'BEGIN {if (o > 0) printf "%.2fx", n / o; else print "-"}'; }
        printf '%-8s %7s | %9s %7s %7s | %9s %7s %7s | %8s %8s\n' "$mode" "$c" "$o_tps" "$o_lat" "$o_cpu" \
            "$n_tps" "$n_lat" "$n_cpu" "$(ratio "$n_tps" "$o_tps")" "$(ratio "$n_cpu" "$o_cpu")"
    done
done

[ "$CG_TXNS" -gt 0 ] || exit 0
command -v valgrind >/dev/null || { echo "valgrind is missing: no instruction counts" >&2; exit 1; }

# Instructions of one pgsluice process serving one pgbench -S client for `txns` transactions.
instructions() {
    local bin=$1 txns=$2 port
    port=$(free_port)
    config cg "$port"
    RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" \
        "$bin" --config "$work/cg.toml" >"$work/cg.log" 2>&1 &
    local pid=$!
    pids+=("$pid")
    wait_port "$port"
    "$bindir/pgbench" -h 127.0.0.1 -p "$port" -U postgres -n -S -c 1 -t "$txns" postgres >/dev/null 2>&1
    # SIGINT: pgsluice exits at once and callgrind writes its counts.
    kill -INT "$pid"
    wait "$pid" 2>/dev/null || true
    awk '/^(summary|totals):/ {print $2; exit}' "$work/cg.out"
    rm -f "$work/cg.out"
}
echo
printf '%-5s %14s\n' build instr_per_txn
declare -A per_txn
for build in old new; do
    bin=$old
    [ "$build" = new ] && bin=$new
    short=$(instructions "$bin" "$CG_TXNS")
    long=$(instructions "$bin" $((CG_TXNS * 3)))
    per_txn[$build]=$(( (long - short) / (CG_TXNS * 2) ))
    printf '%-5s %14s\n' "$build" "${per_txn[$build]}"
done
awk -v n="${per_txn[new]}" -v o="${per_txn[old]}" 'BEGIN {printf "new/old instructions per transaction: %.3f\n", n / o}'
