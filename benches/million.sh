#!/usr/bin/env bash
# Many clients in one routing space on this machine: NODES switchboard
# nodes on one Redis, and a fleet of load-generator processes whose clients
# connect, log in with unique names and join pair rooms whose two members
# sit on different nodes; all of them hold (answering heartbeats) for HOLD
# seconds; then NEGOTIATE randomly chosen pairs run offer/answer/ICE across
# their two nodes, and every message must arrive once.
#
#   benches/million.sh [connections] [nodes]      (default 1000000, one node per 19,000 clients)
#
# Environment: HOLD (s, 120), NEGOTIATE (1000), SOURCE_IPS (250),
# WORKERS (0: one per 18,000 clients), CONCURRENCY (pairs each worker
# connects at once, 32), HEADROOM_MIB (3072: memory that must stay free
# by the estimate), FLOOR_MIB (1536: the watchdog stops everything when
# MemAvailable falls below it), BASE_PORT (19100), and the per-connection
# estimates in bytes (NODE_B, KERNEL_B, LOAD_B, REDIS_B; measured on this
# machine, see BENCHMARKS.md) with per-process bases (NODE_BASE_KIB,
# WORKER_BASE_KIB), REDIS_NICE (-20 when run as root), NODE_ARGS (more
# node flags; the default lengthens the lease, the Redis timeout and the
# heartbeat for this two-core machine, see below).
#
# Before anything starts, the memory it will take is estimated from those
# figures and compared with MemAvailable: a run that would leave less than
# HEADROOM_MIB is refused. While it runs, a watchdog stops the fleet, the
# nodes and Redis (in that order) if MemAvailable falls below FLOOR_MIB.
# During the hold it samples the nodes' RSS, the load generator's RSS, the
# kernel's slab (against a sample before the run), Redis's used_memory and
# the CPU time of each group of processes, and prints a table. Every process
# it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

CONNECTIONS=${1:-1000000}
PER_NODE=19000
NODES=${2:-$(( (CONNECTIONS + PER_NODE - 1) / PER_NODE ))}
(( NODES >= 2 )) || NODES=2
HOLD=${HOLD:-120}
NEGOTIATE=${NEGOTIATE:-1000}
SOURCE_IPS=${SOURCE_IPS:-250}
WORKERS=${WORKERS:-0}
CONCURRENCY=${CONCURRENCY:-32}
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

(( CONNECTIONS % 2 == 0 )) || { echo "connections must be even (pairs)" >&2; exit 2; }
if (( CONNECTIONS / NODES > 19500 )); then
    echo "$CONNECTIONS clients over $NODES nodes is more than 19,500 a node (the open-files limit): use more nodes" >&2
    exit 2
fi
command -v redis-server >/dev/null || { echo "redis-server not found (apt-get install redis-server)" >&2; exit 1; }
command -v redis-cli >/dev/null || { echo "redis-cli not found (apt-get install redis-tools)" >&2; exit 1; }

mib() { awk -v k="$1" '$1 == k":" { print int($2 / 1024) }' /proc/meminfo; }
kib() { awk -v k="$1" '$1 == k":" { print $2 }' /proc/meminfo; }

# The memory budget, before anything starts.
workers=$WORKERS
(( workers > 0 )) || workers=$(( (CONNECTIONS + 17999) / 18000 ))
per_conn=$(( NODE_B + KERNEL_B + LOAD_B + REDIS_B ))
need_mib=$(( (CONNECTIONS * per_conn / 1024 + NODES * NODE_BASE_KIB + workers * WORKER_BASE_KIB + 65536) / 1024 ))
avail_mib=$(mib MemAvailable)
echo "== budget: $CONNECTIONS clients x $per_conn B (node $NODE_B + kernel $KERNEL_B + load $LOAD_B + redis $REDIS_B)"
echo "   + $NODES nodes x $((NODE_BASE_KIB / 1024)) MiB + $workers workers x $((WORKER_BASE_KIB / 1024)) MiB = $need_mib MiB;" \
     "MemAvailable $avail_mib MiB; headroom asked $HEADROOM_MIB MiB"
if (( avail_mib - need_mib < HEADROOM_MIB )); then
    echo "refused: the run would leave $(( avail_mib - need_mib )) MiB, less than $HEADROOM_MIB MiB of headroom" >&2
    echo "(fewer connections, or wait until the machine has more memory available)" >&2
    exit 3
fi
fds=$(awk '{ print $3 - $1 }' /proc/sys/fs/file-nr)
if (( fds < 2 * CONNECTIONS + 10000 )); then
    echo "refused: $((2 * CONNECTIONS)) sockets do not fit the system's $fds free file handles (fs.file-max)" >&2
    exit 3
fi

cargo build --release -q --bin switchboard -p switchboard --bin switchboard-load -p switchboard-load
ulimit -n "$(ulimit -Hn)"
tmp=$(mktemp -d /tmp/million.XXXXXX)
REDIS_SOCK=$tmp/redis.sock
REDIS=
FLEET=
WATCHDOG=
nodes=()
stop_all() {
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
cleanup() {
    [ -n "$WATCHDOG" ] && kill "$WATCHDOG" 2>/dev/null || true
    stop_all
    if [ -n "${KEEP_LOGS:-}" ]; then echo "logs kept in $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

TICK=$(getconf CLK_TCK)
# Sum of utime+stime ticks of the given pids.
ticks() { local t=0 p; for p in "$@"; do t=$(( t + $(awk '{ print $14 + $15 }' "/proc/$p/stat" 2>/dev/null || echo 0) )); done; echo "$t"; }
# Sum of VmRSS (KiB) of the given pids.
rss() { local t=0 p; for p in "$@"; do t=$(( t + $(awk '$1 == "VmRSS:" { print $2 }' "/proc/$p/status" 2>/dev/null || echo 0) )); done; echo "$t"; }
busy() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8 }' /proc/stat; }
redis_mem() { redis-cli -s "$REDIS_SOCK" info memory | awk -F: '$1 == "used_memory" { print $2 + 0 }'; }

slab_before=$(kib Slab)
sunreclaim_before=$(kib SUnreclaim)
avail_before=$(kib MemAvailable)

# Redis is the one process every node waits on: on a real deployment it has
# a core of its own; here it shares two cores with a hundred nodes and
# workers, and at an equal share it answers too late (joins time out, then
# lease renewals, and nodes are taken for dead). It runs at nice -20 when
# the script may raise its priority (root).
REDIS_NICE=${REDIS_NICE:--20}
prio=()
if [ "$(id -u)" = 0 ] && [ "$REDIS_NICE" != 0 ]; then prio=(nice -n "$REDIS_NICE"); fi
echo "== redis-server (unix socket, no persistence${prio:+, nice $REDIS_NICE})"
"${prio[@]}" redis-server --port 0 --unixsocket "$REDIS_SOCK" --unixsocketperm 700 --save '' --appendonly no \
    --maxclients 10000 --dir "$tmp" --logfile "$tmp/redis.log" &
REDIS=$!
for _ in $(seq 100); do redis-cli -s "$REDIS_SOCK" ping >/dev/null 2>&1 && break; sleep 0.1; done
redis-cli -s "$REDIS_SOCK" ping >/dev/null || { echo "redis did not start" >&2; cat "$tmp/redis.log" >&2; exit 1; }

echo "== $NODES nodes on 127.0.0.1:$((BASE_PORT + 1))..$((BASE_PORT + NODES))"
RATE=(--rate-per-second 100000000 --rate-burst 100000000
      --rate-bytes-per-second 2000000000 --rate-bytes-burst 2000000000
      --max-connections 19500 --max-connections-per-ip 1000000)
# Two cores for a hundred processes: a node may wait seconds for the CPU.
# With the defaults (3 s lease, 1 s Redis timeout) a starved node misses a
# renewal, is taken for dead and reaped (one script of seconds that stalls
# Redis for everyone), and its clients are closed: a cascade. A 30 s lease
# and 10 s Redis timeout ride it out. Heartbeats every 30 s instead of 15:
# a ping and its pong cost about 34 µs of CPU (node, load generator and
# loopback TCP together), and a million clients pinged every 15 s would
# need 2.3 cores of this machine's 2 (BENCHMARKS.md).
read -r -a NODE_ARGS <<<"${NODE_ARGS:---lease-ms 30000 --redis-timeout-ms 10000 --heartbeat-interval-ms 30000 --heartbeat-timeout-ms 90000}"
RATE+=("${NODE_ARGS[@]}")
urls=()
for i in $(seq "$NODES"); do
    port=$((BASE_PORT + i))
    RUST_LOG=warn target/release/switchboard --listen "127.0.0.1:$port" \
        --redis-url "unix://$REDIS_SOCK" --cluster million "${RATE[@]}" >"$tmp/node-$i.log" 2>&1 &
    nodes+=("$!")
    urls+=("ws://127.0.0.1:$port/ws")
done
for i in $(seq "$NODES"); do
    port=$((BASE_PORT + i))
    for _ in $(seq 200); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null || { echo "node $i did not start" >&2; cat "$tmp/node-$i.log" >&2; exit 1; }
done
nodes_rss_before=$(rss "${nodes[@]}")
redis_before=$(redis_mem)

# The watchdog: stops everything if memory runs short.
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

echo "== fleet: $CONNECTIONS clients, $workers workers, hold ${HOLD}s, $NEGOTIATE negotiations, $SOURCE_IPS source addresses"
nodes_csv=$(IFS=,; echo "${urls[*]}")
target/release/switchboard-load --source-ips "$SOURCE_IPS" --json fleet --nodes "$nodes_csv" \
    --connections "$CONNECTIONS" --workers "$WORKERS" --connect-concurrency "$CONCURRENCY" \
    --hold "$HOLD" --negotiate "$NEGOTIATE" --phase-file "$tmp/phase" >"$tmp/report.json" &
FLEET=$!
echo "$FLEET" >"$tmp/fleet.pid"

# Samples during the hold: one 10 s in, one at most 60 s later.
phase() { cat "$tmp/phase" 2>/dev/null || echo starting; }
while kill -0 "$FLEET" 2>/dev/null && [ "$(phase)" != holding ]; do sleep 0.5; done
sampled=0
if kill -0 "$FLEET" 2>/dev/null && [ "$(phase)" = holding ]; then
    window=$(( HOLD - 20 )); (( window > 60 )) && window=60
    (( window >= 5 )) || window=5
    sleep 10
    workers_pids=($(pgrep -P "$FLEET" || true))
    c0_nodes=$(ticks "${nodes[@]}"); c0_redis=$(ticks "$REDIS"); c0_load=$(ticks "$FLEET" "${workers_pids[@]}")
    read -r b0 t0 < <(busy)
    s0=$(date +%s.%N)
    sleep "$window"
    if [ "$(phase)" = holding ]; then
        c1_nodes=$(ticks "${nodes[@]}"); c1_redis=$(ticks "$REDIS"); c1_load=$(ticks "$FLEET" "${workers_pids[@]}")
        read -r b1 t1 < <(busy)
        s1=$(date +%s.%N)
        nodes_rss=$(rss "${nodes[@]}")
        load_rss=$(rss "$FLEET" "${workers_pids[@]}")
        redis_used=$(redis_mem)
        redis_rss=$(rss "$REDIS")
        slab=$(kib Slab); sunreclaim=$(kib SUnreclaim); avail=$(kib MemAvailable)
        tcp_mem_pages=$(awk '$1 == "TCP:" { for (i = 2; i < NF; i++) if ($i == "mem") print $(i + 1) }' /proc/net/sockstat)
        sampled=1
    fi
fi
status=0
wait "$FLEET" || status=$?
FLEET=
if [ -f "$tmp/watchdog" ]; then
    echo "!! the watchdog stopped the run (memory ran short): the progress lines above say how far it got" >&2
fi
cat "$tmp/report.json"
echo

python3 - "$tmp/report.json" "$CONNECTIONS" "$NODES" "$sampled" \
    "${nodes_rss_before:-0}" "${nodes_rss:-0}" "${load_rss:-0}" "${redis_before:-0}" "${redis_used:-0}" "${redis_rss:-0}" \
    "$slab_before" "${slab:-0}" "$sunreclaim_before" "${sunreclaim:-0}" "$avail_before" "${avail:-0}" "${tcp_mem_pages:-0}" \
    "${c0_nodes:-0}" "${c1_nodes:-0}" "${c0_redis:-0}" "${c1_redis:-0}" "${c0_load:-0}" "${c1_load:-0}" \
    "${b0:-0}" "${b1:-0}" "${t0:-0}" "${t1:-0}" "${s0:-0}" "${s1:-0}" "$TICK" "$(cat "$tmp/avail.min" 2>/dev/null || echo 0)" <<'EOF'
import json, sys
a = sys.argv[1:]
try:
    r = json.load(open(a[0]))
except Exception:
    r = {}
conns, nodes, sampled = int(a[1]), int(a[2]), a[3] == "1"
(nodes_before, nodes_rss, load_rss, redis_before, redis_used, redis_rss, slab0, slab1, sun0, sun1,
 avail0, avail1, tcp_pages, cn0, cn1, cr0, cr1, cl0, cl1, b0, b1, t0, t1) = map(float, a[4:27])
s0, s1, tick, avail_min = float(a[27]), float(a[28]), float(a[29]), float(a[30])
held = r.get("open_after_hold") or r.get("established") or 0
neg = r.get("negotiations", {})
rows = [
    ("clients joined", f"{r.get('established', 0):,} of {conns:,} ({r.get('errors', 0)} errors)"),
    ("nodes / load processes", f"{nodes} / {r.get('workers', 0)}"),
    ("pairs on one node", r.get("pairs_on_one_node")),
    ("time to all joined", f"{r.get('time_to_all_s', 0):.1f} s"),
    ("connect rate (mean / peak second)", f"{r.get('connect_rate_per_s', 0):,}/s / {r.get('peak_connect_rate_per_s', 0):,}/s"),
    ("held", f"{r.get('hold_s', 0):.0f} s, {r.get('open_after_hold', 0):,} open at the end, {r.get('dropped_during_hold', 0)} dropped, {r.get('pongs_during_hold', 0):,} heartbeats answered"),
    ("negotiations", f"{neg.get('completed', 0)} of {neg.get('asked', 0)} complete; lost {neg.get('lost_messages')}, duplicates {neg.get('duplicates')}, misrouted {neg.get('misrouted')}; p50 {neg.get('time_to_complete', {}).get('p50_us', 0) / 1000:.1f} ms, p99 {neg.get('time_to_complete', {}).get('p99_us', 0) / 1000:.1f} ms"),
]
if sampled and held:
    per = lambda kib: f"{kib * 1024 / held:,.0f} B"
    wall = s1 - s0
    cpu = lambda d: f"{d / tick / wall * 100:.0f}% of a core"
    rows += [
        ("nodes RSS (sum) / per client", f"{nodes_rss / 1024:,.0f} MiB / {per(nodes_rss - nodes_before)} (over the idle nodes)"),
        ("load generator RSS (sum) / per client", f"{load_rss / 1024:,.0f} MiB / {per(load_rss)} (bases included)"),
        ("kernel slab / per client", f"+{(slab1 - slab0) / 1024:,.0f} MiB / {per(slab1 - slab0)} (unreclaimable: {per(sun1 - sun0)})"),
        ("kernel TCP buffers (sockstat mem)", f"{tcp_pages * 4 / 1024:,.0f} MiB"),
        ("Redis used_memory / per client", f"{redis_used / 2**20:,.0f} MiB / {(redis_used - redis_before) / held:,.0f} B (RSS {redis_rss / 1024:,.0f} MiB)"),
        ("MemAvailable drop / per client", f"{(avail0 - avail1) / 1024:,.0f} MiB / {per(avail0 - avail1)} (lowest MemAvailable {avail_min:,.0f} MiB)"),
        (f"CPU during the hold ({wall:.0f} s)", f"nodes {cpu(cn1 - cn0)}, Redis {cpu(cr1 - cr0)}, load {cpu(cl1 - cl0)}; machine {(b1 - b0) / max(t1 - t0, 1) * 100:.0f}% busy of 2 cores"),
    ]
width = max(len(k) for k, _ in rows)
print()
for k, v in rows:
    print(f"{k:<{width}}  {v}")
print("result:", "OK" if r.get("ok") else "NOT OK")
EOF
exit "$status"
