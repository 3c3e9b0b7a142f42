#!/usr/bin/env bash
# Same-node against cross-node relay in a cluster, in one sitting, with the
# same load pattern (what browsers send: one side initiates, one frame per
# WebSocket message), and relay throughput of 1, 2 and 3 nodes.
#
#   benches/cluster.sh [runs]      (default 3 runs of each, medians in BENCHMARKS.md)
#
# Every process's CPU is read from /proc/PID/stat (user and system time)
# before and after each run, so the table says who was the bottleneck:
# each node, Redis and the load generator. Nodes share CPU 0; Redis and the
# load generator share CPU 1 (this machine has two cores).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
PAIRS=${PAIRS:-100}
DURATION=${DURATION:-8}
cargo build --release -q --bin switchboard -p switchboard --bin switchboard-load -p switchboard-load 2>/dev/null ||
    cargo build --release -q --workspace --bins
command -v redis-server >/dev/null || { echo "redis-server not found (apt-get install redis-server)" >&2; exit 1; }
ulimit -n "$(ulimit -Hn)"
tmp=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT
TICK=$(getconf CLK_TCK)
# user+system CPU seconds of a process.
cpu() { awk -v t="$TICK" '{ printf "%.3f %.3f\n", $14 / t, $15 / t }' "/proc/$1/stat"; }

RATE=(--rate-per-second 100000000 --rate-burst 100000000
      --rate-bytes-per-second 2000000000 --rate-bytes-burst 2000000000
      --max-connections-per-ip 1000000)

start_redis() {
    taskset -c 1 redis-server --port 0 --unixsocket "$tmp/redis.sock" --save '' --appendonly no \
        >"$tmp/redis.log" 2>&1 &
    REDIS=$!
    pids+=("$REDIS")
    for _ in $(seq 50); do [ -S "$tmp/redis.sock" ] && return; sleep 0.1; done
    echo "redis did not start" >&2; exit 1
}

# start_node PORT [args...]: a node on CPU 0; sets NODE.
start_node() {
    local port=$1; shift
    taskset -c 0 target/release/switchboard --listen "127.0.0.1:$port" "${RATE[@]}" "$@" \
        >"$tmp/node-$port.log" 2>&1 &
    NODE=$!
    pids+=("$NODE")
    for _ in $(seq 100); do
        curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && return
        sleep 0.1
    done
    echo "node on $port did not start" >&2; cat "$tmp/node-$port.log" >&2; exit 1
}

# measure LABEL PIDS... -- LOAD ARGS: runs the load generator on CPU 1 and
# prints one line: label, messages/s, round trip p50/p99, CPU µs per
# message of each watched process.
measure() {
    local label=$1; shift
    local watch=()
    while [ "$1" != "--" ]; do watch+=("$1"); shift; done
    shift
    local before=() after=()
    for p in "${watch[@]}"; do before+=("$(cpu "$p")"); done
    taskset -c 1 target/release/switchboard-load --quiet --json "$@" >"$tmp/report.json"
    for p in "${watch[@]}"; do after+=("$(cpu "$p")"); done
    python3 - "$label" "$tmp/report.json" "${before[@]}" -- "${after[@]}" <<'EOF'
import json, sys
label, report = sys.argv[1], json.load(open(sys.argv[2]))
rest = sys.argv[3:]
cut = rest.index("--")
before, after = rest[:cut], rest[cut + 1:]
n = report["relayed_messages"]
cols = []
for b, a in zip(before, after):
    bu, bs = map(float, b.split()); au, as_ = map(float, a.split())
    cols.append(f"{(au - bu) / n * 1e6:.2f}+{(as_ - bs) / n * 1e6:.2f}")
rt = report["round_trip"]
print(f"{label:<28} {report['relayed_per_second']:>9} msg/s  rtt p50 {rt['p50_us']:>5} µs p99 {rt['p99_us']:>6} µs  "
      f"lost {report['lost']} errors {report['errors']}  cpu µs/msg (user+sys): {'  '.join(cols)}")
EOF
}

for run in $(seq "$RUNS"); do
    echo "== run $run of $RUNS ($PAIRS pairs, window 1, ${DURATION}s)"
    # One node, no Redis: the baseline.
    start_node 18801
    solo=$NODE
    measure "single node (no redis)" "$solo" -- \
        --url ws://127.0.0.1:18801/ws relay --pairs "$PAIRS" --window 1 --duration "$DURATION"
    kill "$solo"; wait "$solo" 2>/dev/null || true

    start_redis
    start_node 18811 --redis-url "unix://$tmp/redis.sock" --cluster bench
    n1=$NODE
    start_node 18812 --redis-url "unix://$tmp/redis.sock" --cluster bench
    n2=$NODE
    measure "cluster, same node" "$n1" "$n2" "$REDIS" -- \
        --url ws://127.0.0.1:18811/ws relay --pairs "$PAIRS" --window 1 --duration "$DURATION"
    measure "cluster, cross node" "$n1" "$n2" "$REDIS" -- \
        --url ws://127.0.0.1:18811/ws relay --pairs "$PAIRS" --window 1 --duration "$DURATION" \
        --peer-url ws://127.0.0.1:18812/ws
    measure "cluster, cross node, W=16" "$n1" "$n2" "$REDIS" -- \
        --url ws://127.0.0.1:18811/ws relay --pairs "$PAIRS" --window 16 --duration "$DURATION" \
        --peer-url ws://127.0.0.1:18812/ws
    measure "cluster, 1 pair (latency)" "$n1" "$n2" "$REDIS" -- \
        --url ws://127.0.0.1:18811/ws relay --pairs 1 --window 1 --duration "$DURATION" \
        --peer-url ws://127.0.0.1:18812/ws
    measure "same node, 1 pair (latency)" "$n1" "$n2" "$REDIS" -- \
        --url ws://127.0.0.1:18811/ws relay --pairs 1 --window 1 --duration "$DURATION"
    kill "$n1" "$n2"; wait "$n1" "$n2" 2>/dev/null || true
    kill "$REDIS"; wait "$REDIS" 2>/dev/null || true
    rm -f "$tmp/redis.sock"
done

# Directory requests (login, join, leave, logout) one at a time: a single
# node against a cluster whose rooms have a member on the other node.
echo "== directory requests, one worker (${DURATION}s)"
for run in $(seq "$RUNS"); do
    start_node 18831
    solo=$NODE
    echo "-- single node"
    taskset -c 1 target/release/switchboard-load --quiet --url ws://127.0.0.1:18831/ws \
        directory --workers 1 --duration "$DURATION" | grep -E 'loops_per|p50_us|p99_us' | grep -v p999
    kill "$solo"; wait "$solo" 2>/dev/null || true
    start_redis
    start_node 18832 --redis-url "unix://$tmp/redis.sock" --cluster dir
    n1=$NODE
    start_node 18833 --redis-url "unix://$tmp/redis.sock" --cluster dir
    n2=$NODE
    echo "-- cluster, the room's other member on the other node"
    taskset -c 1 target/release/switchboard-load --quiet --url ws://127.0.0.1:18832/ws \
        directory --workers 1 --duration "$DURATION" --peer-url ws://127.0.0.1:18833/ws |
        grep -E 'loops_per|p50_us|p99_us' | grep -v p999
    kill "$n1" "$n2" "$REDIS"; wait "$n1" "$n2" "$REDIS" 2>/dev/null || true
    rm -f "$tmp/redis.sock"
done

# Scaling: 1, 2 and 3 nodes, unpinned, each driven by its own load generator
# (same-node pairs, 100 per node) at once; the sum of what they relayed.
# On two cores the nodes and load generators share the CPUs, so this shows
# the ceiling of the machine, not of the design.
echo "== scaling (unpinned, ${DURATION}s, $PAIRS pairs per node)"
for nodes in 1 2 3; do
    start_redis
    ports=()
    for i in $(seq "$nodes"); do
        port=$((18820 + i))
        start_node "$port" --redis-url "unix://$tmp/redis.sock" --cluster scale
        taskset -pc 0,1 "$NODE" >/dev/null
        ports+=("$port")
    done
    loads=()
    for port in "${ports[@]}"; do
        target/release/switchboard-load --quiet --json --url "ws://127.0.0.1:$port/ws" \
            relay --pairs "$PAIRS" --window 16 --duration "$DURATION" >"$tmp/scale-$port.json" &
        loads+=("$!")
    done
    wait "${loads[@]}"
    python3 - "$nodes" "$tmp"/scale-*.json <<'EOF2'
import json, sys
nodes, files = sys.argv[1], sys.argv[2:]
total = sum(json.load(open(f))["relayed_per_second"] for f in files)
print(f"{nodes} node(s): {total} msg/s in all (window 16, same-node pairs)")
EOF2
    rm -f "$tmp"/scale-*.json
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    pids=()
    rm -f "$tmp/redis.sock"
done
