# What the fleet benches share (sourced by benches/million.sh and
# benches/storm.sh, from the repository root): the memory budget checked
# before anything starts, Redis and the nodes, the watchdog that stops
# everything when memory runs short, stopping every process on exit, and
# the readers of /proc that the reports are made of.
#
# The caller sets CONNECTIONS, NODES and WORKERS (0: one worker per 18,000
# clients) and may set, in the environment: HEADROOM_MIB (3072: memory that
# must stay free by the estimate), FLOOR_MIB (1536: the watchdog stops
# everything when MemAvailable falls below it), BASE_PORT (19100), the
# per-connection estimates in bytes (NODE_B, KERNEL_B, LOAD_B, REDIS_B;
# measured on this machine, see BENCHMARKS.md) with per-process bases
# (NODE_BASE_KIB, WORKER_BASE_KIB), REDIS_NICE (-20 when run as root), and
# NODE_ARGS (node flags; each script sets its own default).

HEADROOM_MIB=${HEADROOM_MIB:-3072}
FLOOR_MIB=${FLOOR_MIB:-1536}
BASE_PORT=${BASE_PORT:-19100}
# Per connection, bytes (the 1,000,000 run of 2026-12-05 in BENCHMARKS.md,
# rounded up): node RSS, kernel slab (both socket ends), load generator
# RSS, Redis used_memory.
NODE_B=${NODE_B:-5000}
KERNEL_B=${KERNEL_B:-8400}
LOAD_B=${LOAD_B:-1400}
REDIS_B=${REDIS_B:-1000}
NODE_BASE_KIB=${NODE_BASE_KIB:-16384}
WORKER_BASE_KIB=${WORKER_BASE_KIB:-8192}

command -v redis-server >/dev/null || { echo "redis-server not found (apt-get install redis-server)" >&2; exit 1; }
command -v redis-cli >/dev/null || { echo "redis-cli not found (apt-get install redis-tools)" >&2; exit 1; }

mib() { awk -v k="$1" '$1 == k":" { print int($2 / 1024) }' /proc/meminfo; }
kib() { awk -v k="$1" '$1 == k":" { print $2 }' /proc/meminfo; }
TICK=$(getconf CLK_TCK)
# Sum of utime+stime ticks of the given pids.
ticks() { local t=0 p; for p in "$@"; do t=$(( t + $(awk '{ print $14 + $15 }' "/proc/$p/stat" 2>/dev/null || echo 0) )); done; echo "$t"; }
# Sum of VmRSS (KiB) of the given pids.
rss() { local t=0 p; for p in "$@"; do t=$(( t + $(awk '$1 == "VmRSS:" { print $2 }' "/proc/$p/status" 2>/dev/null || echo 0) )); done; echo "$t"; }
busy() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8 }' /proc/stat; }
redis_mem() { redis-cli -s "$REDIS_SOCK" info memory | awk -F: '$1 == "used_memory" { print $2 + 0 }'; }

# The memory budget, before anything starts: refuses (exit 3) a run that
# would leave less than HEADROOM_MIB, or whose sockets do not fit the
# system's file handles. Sets `workers`.
fleet_budget() {
    workers=$WORKERS
    (( workers > 0 )) || workers=$(( (CONNECTIONS + 17999) / 18000 ))
    local per_conn=$(( NODE_B + KERNEL_B + LOAD_B + REDIS_B ))
    local need_mib=$(( (CONNECTIONS * per_conn / 1024 + NODES * NODE_BASE_KIB + workers * WORKER_BASE_KIB + 65536) / 1024 ))
    local avail_mib
    avail_mib=$(mib MemAvailable)
    echo "== budget: $CONNECTIONS clients x $per_conn B (node $NODE_B + kernel $KERNEL_B + load $LOAD_B + redis $REDIS_B)"
    echo "   + $NODES nodes x $((NODE_BASE_KIB / 1024)) MiB + $workers workers x $((WORKER_BASE_KIB / 1024)) MiB = $need_mib MiB;" \
         "MemAvailable $avail_mib MiB; headroom asked $HEADROOM_MIB MiB"
    if (( avail_mib - need_mib < HEADROOM_MIB )); then
        echo "refused: the run would leave $(( avail_mib - need_mib )) MiB, less than $HEADROOM_MIB MiB of headroom" >&2
        echo "(fewer connections, or wait until the machine has more memory available)" >&2
        exit 3
    fi
    local fds
    fds=$(awk '{ print $3 - $1 }' /proc/sys/fs/file-nr)
    if (( fds < 2 * CONNECTIONS + 10000 )); then
        echo "refused: $((2 * CONNECTIONS)) sockets do not fit the system's $fds free file handles (fs.file-max)" >&2
        exit 3
    fi
}

# Builds the binaries, makes the run's directory ($tmp, named after $1) and
# sets up stopping everything on exit.
fleet_setup() {
    cargo build --release -q --bin switchboard -p switchboard --bin switchboard-load -p switchboard-load
    ulimit -n "$(ulimit -Hn)"
    tmp=$(mktemp -d "/tmp/$1.XXXXXX")
    REDIS_SOCK=$tmp/redis.sock
    REDIS=
    FLEET=
    WATCHDOG=
    nodes=()
    urls=()
    trap fleet_cleanup EXIT
    trap 'exit 130' INT TERM
}

fleet_stop_all() {
    # The fleet first (its workers die with it), then the nodes, then Redis.
    [ -n "$FLEET" ] && kill "$FLEET" 2>/dev/null || true
    [ -n "$FLEET" ] && wait "$FLEET" 2>/dev/null || true
    if ((${#nodes[@]})); then
        kill "${nodes[@]}" 2>/dev/null || true
        for _ in $(seq 100); do
            alive=0
            for p in "${nodes[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
            (( alive )) || break
            sleep 0.2
        done
        kill -9 "${nodes[@]}" 2>/dev/null || true
        wait "${nodes[@]}" 2>/dev/null || true
    fi
    [ -n "$REDIS" ] && kill "$REDIS" 2>/dev/null || true
    [ -n "$REDIS" ] && wait "$REDIS" 2>/dev/null || true
}

fleet_cleanup() {
    [ -n "$WATCHDOG" ] && kill "$WATCHDOG" 2>/dev/null || true
    fleet_stop_all
    if [ -n "${KEEP_LOGS:-}" ]; then echo "logs kept in $tmp"; else rm -rf "$tmp"; fi
}

# Redis is the one process every node waits on: on a real deployment it has
# a core of its own; here it shares two cores with the nodes and workers,
# and at an equal share it answers too late (joins time out, then lease
# renewals, and nodes are taken for dead). It runs at nice -20 when the
# script may raise its priority (root).
fleet_start_redis() {
    REDIS_NICE=${REDIS_NICE:--20}
    local prio=()
    if [ "$(id -u)" = 0 ] && [ "$REDIS_NICE" != 0 ]; then prio=(nice -n "$REDIS_NICE"); fi
    echo "== redis-server (unix socket, no persistence${prio:+, nice $REDIS_NICE})"
    "${prio[@]}" redis-server --port 0 --unixsocket "$REDIS_SOCK" --unixsocketperm 700 --save '' --appendonly no \
        --maxclients 10000 --dir "$tmp" --logfile "$tmp/redis.log" &
    REDIS=$!
    for _ in $(seq 100); do redis-cli -s "$REDIS_SOCK" ping >/dev/null 2>&1 && break; sleep 0.1; done
    redis-cli -s "$REDIS_SOCK" ping >/dev/null || { echo "redis did not start" >&2; cat "$tmp/redis.log" >&2; exit 1; }
}

# Starts NODES nodes of the cluster named $1 with NODE_ARGS, each allowed
# 19,500 connections (the open-files limit), and waits until each is ready.
# Sets `nodes` (pids), `urls` and `nodes_csv`.
fleet_start_nodes() {
    echo "== $NODES nodes on 127.0.0.1:$((BASE_PORT + 1))..$((BASE_PORT + NODES))"
    local args=(--rate-per-second 100000000 --rate-burst 100000000
        --rate-bytes-per-second 2000000000 --rate-bytes-burst 2000000000
        --max-connections 19500 --max-connections-per-ip 1000000)
    local extra
    read -r -a extra <<<"$NODE_ARGS"
    args+=("${extra[@]}")
    local i port
    for i in $(seq "$NODES"); do
        port=$((BASE_PORT + i))
        RUST_LOG=warn target/release/switchboard --listen "127.0.0.1:$port" \
            --redis-url "unix://$REDIS_SOCK" --cluster "$1" "${args[@]}" >"$tmp/node-$i.log" 2>&1 &
        nodes+=("$!")
        urls+=("ws://127.0.0.1:$port/ws")
    done
    for i in $(seq "$NODES"); do
        port=$((BASE_PORT + i))
        for _ in $(seq 200); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
        curl -sf "http://127.0.0.1:$port/readyz" >/dev/null || { echo "node $i did not start" >&2; cat "$tmp/node-$i.log" >&2; exit 1; }
    done
    nodes_csv=$(IFS=,; echo "${urls[*]}")
}

# The watchdog: stops the fleet (whose pid is in $tmp/fleet.pid), the nodes
# and Redis if MemAvailable falls below FLOOR_MIB; keeps the lowest
# MemAvailable seen in $tmp/avail.min.
fleet_watchdog() {
    (
        while sleep 1; do
            a=$(mib MemAvailable)
            if (( a < FLOOR_MIB )); then
                echo "!! watchdog: MemAvailable $a MiB < $FLOOR_MIB MiB: stopping the fleet, the nodes and Redis" >&2
                touch "$tmp/watchdog"
                [ -f "$tmp/fleet.pid" ] && kill "$(cat "$tmp/fleet.pid")" 2>/dev/null
                kill "${nodes[@]}" 2>/dev/null
                kill "$REDIS" 2>/dev/null
                exit 0
            fi
            echo "$a" >"$tmp/avail.last"
            if [ ! -f "$tmp/avail.min" ] || (( a < $(cat "$tmp/avail.min") )); then echo "$a" >"$tmp/avail.min"; fi
        done
    ) &
    WATCHDOG=$!
}

# Waits for the fleet (its exit status in `status`) and prints its report.
fleet_wait() {
    status=0
    wait "$FLEET" || status=$?
    FLEET=
    if [ -f "$tmp/watchdog" ]; then
        echo "!! the watchdog stopped the run (memory ran short): the progress lines above say how far it got" >&2
    fi
    cat "$tmp/report.json"
    echo
}

# The phase the fleet wrote to its --phase-file.
phase() { cat "$tmp/phase" 2>/dev/null || echo starting; }
