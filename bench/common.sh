# Shared by the bench scripts: where PostgreSQL's programs are, running them as `postgres`
# when root, free ports, and a throwaway primary initialised for pgbench. Source it.

bindir=$(pg_config --bindir 2>/dev/null || ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_primary DIR PORT MAX_CONNECTIONS SCALE: initdb DIR/data, start it on 127.0.0.1:PORT
# (sockets in DIR), and create pgbench's tables at SCALE.
start_primary() {
    local dir=$1 port=$2 max=$3 scale=$4
    as_pg "$bindir/initdb" -D "$dir/data" -U postgres -A trust --no-sync >/dev/null
    cat >>"$dir/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
max_connections = $max
fsync = off
synchronous_commit = off
CONF
    as_pg "$bindir/pg_ctl" -D "$dir/data" -l "$dir/pg.log" -o "-p $port" -w start >/dev/null
    "$bindir/pgbench" -h 127.0.0.1 -p "$port" -U postgres -i -q -s "$scale" postgres >/dev/null 2>&1
}

# wait_port PORT: until psql gets an answer on 127.0.0.1:PORT (at most a minute; then the script
# ends with an error).
wait_port() {
    for _ in $(seq 600); do
        "$bindir/psql" -X -h 127.0.0.1 -p "$1" -U postgres -d postgres -Atc 'SELECT 1' >/dev/null 2>&1 && return
        sleep 0.1
    done
    echo "nothing answers on port $1" >&2
    exit 1
}

# make_replicas DIR PRIMARY_PORT: two streaming replicas of the primary (DIR/replica1,
# DIR/replica2, from pg_basebackup), started; `replica_list` holds them as a TOML list's items.
make_replicas() {
    local dir=$1 primary=$2 r port
    replica_list=""
    for r in replica1 replica2; do
        port=$(free_port)
        as_pg "$bindir/pg_basebackup" -h 127.0.0.1 -p "$primary" -U postgres -D "$dir/$r" -R -X stream -c fast
        as_pg "$bindir/pg_ctl" -D "$dir/$r" -l "$dir/$r.log" -o "-p $port" -w start >/dev/null
        replica_list="$replica_list${replica_list:+, }\"127.0.0.1:$port\""
    done
}

# start_replicas DIR PRIMARY_PORT CONFIG OUT_CONFIG PORT: make_replicas, and OUT_CONFIG:
# pgsluice's CONFIG listening on PORT with those replicas for the database on PRIMARY_PORT.
start_replicas() {
    local dir=$1 primary=$2 config=$3 out=$4 listen=$5
    make_replicas "$dir" "$primary"
    sed -e "s/^listen_port = .*/listen_port = $listen/" \
        -e "s/^port = $primary\$/port = $primary\nreplicas = [$replica_list]/" "$config" >"$out"
}

# The processes a script started (add each pid to `pids`), killed at exit; the servers under
# $work stopped and $work removed. `stop_also` may name one more command line to kill.
pids=()
stop_also=""
cleanup() {
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    [ -n "$stop_also" ] && pkill -9 -f "$stop_also" 2>/dev/null || true
    for d in "$work/data" "$work/replica1" "$work/replica2"; do
        [ -d "$d" ] && as_pg "$bindir/pg_ctl" -D "$d" -m immediate stop >/dev/null 2>&1 || true
    done
    rm -rf "$work"
}

# build_sluice: pgsluice's release binary, built from this tree.
build_sluice() {
    echo "building pgsluice (release) ..." >&2
    (cd "$root" && cargo build --release -q)
}
