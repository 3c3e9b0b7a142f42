#!/usr/bin/env bash
# What session resume costs, in one sitting: relay with resume off and on
# (acknowledgements both ways, replay buffers on both sides), alternated,
# and the resume rate (a session's connection dropped and resumed on a new
# one, per second). Server on CPU 0, load generator on CPU 1.
#
#   benches/resume.sh [runs]     (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
cargo build --release -q --workspace --bins
ulimit -n "$(ulimit -Hn)"
PORT=${PORT:-18950}
start() {
    taskset -c 0 target/release/switchboard --listen "127.0.0.1:$PORT" \
        --rate-per-second 100000000 --rate-burst 100000000 \
        --rate-bytes-per-second 2000000000 --rate-bytes-burst 2000000000 \
        --max-connections-per-ip 1000000 >/dev/null 2>&1 &
    SERVER=$!
    for _ in $(seq 50); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && return; sleep 0.1; done
    echo "server did not start" >&2; exit 1
}
load() {
    taskset -c 1 target/release/switchboard-load --quiet --json --server-pid "$SERVER" \
        --url "ws://127.0.0.1:$PORT/ws" "$@"
}
start
trap 'kill $SERVER 2>/dev/null || true' EXIT
for run in $(seq "$RUNS"); do
    for mode in off on; do
        extra=()
        [ "$mode" = on ] && extra=(--resume)
        load "${extra[@]}" relay --pairs 100 --window 1 --duration 8 |
            python3 -c "import json,sys; r=json.load(sys.stdin); print('run $run resume $mode:', r['relayed_per_second'], 'msg/s, lost', r['lost'], 'errors', r['errors'], 'server us/msg', r['server_us_per_message'])"
    done
done
for run in $(seq "$RUNS"); do
    load churn --workers 16 --duration 5 --resume-sessions |
        python3 -c "import json,sys; r=json.load(sys.stdin); print('run $run resumes:', r['operations_per_second'], '/s, errors', r['errors'], 'p50', r['operation_time']['p50_us'], 'us p99', r['operation_time']['p99_us'], 'us')"
    load churn --workers 16 --duration 5 |
        python3 -c "import json,sys; r=json.load(sys.stdin); print('run $run fresh connect+join+leave:', r['operations_per_second'], '/s, errors', r['errors'])"
done

# Resume across nodes: two nodes of a cluster on one Redis (nodes on CPU 0,
# Redis and the load generator on CPU 1); each loop drops the session's
# connection and resumes it on the other node, which takes the session over
# (docs/PROTOCOL.md, section 11a, "Across nodes"). Beside it, the same
# cluster with every resume on the node that holds the session.
if ! command -v redis-server >/dev/null; then
    echo "resume across nodes: skipped, redis-server not found (apt-get install redis-server)" >&2
    exit 1
fi
kill "$SERVER" 2>/dev/null || true
tmp=$(mktemp -d)
taskset -c 1 redis-server --port 0 --unixsocket "$tmp/redis.sock" --save '' --appendonly no >"$tmp/redis.log" 2>&1 &
REDIS=$!
for _ in $(seq 50); do [ -S "$tmp/redis.sock" ] && break; sleep 0.1; done
nodes=()
for port in $((PORT + 1)) $((PORT + 2)); do
    taskset -c 0 target/release/switchboard --listen "127.0.0.1:$port" --redis-url "unix://$tmp/redis.sock" \
        --cluster resume-bench --rate-per-second 100000000 --rate-burst 100000000 \
        --rate-bytes-per-second 2000000000 --rate-bytes-burst 2000000000 \
        --max-connections-per-ip 1000000 >"$tmp/node-$port.log" 2>&1 &
    nodes+=($!)
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
done
trap 'kill ${nodes[*]} $REDIS 2>/dev/null || true; rm -rf "$tmp"' EXIT
A="ws://127.0.0.1:$((PORT + 1))/ws"
B="ws://127.0.0.1:$((PORT + 2))/ws"
for run in $(seq "$RUNS"); do
    taskset -c 1 target/release/switchboard-load --quiet --json --url "$A" churn --workers 16 --duration 5 \
        --resume-sessions --resume-on "$B" |
        python3 -c "import json,sys; r=json.load(sys.stdin); print('run $run resumes across nodes:', r['operations_per_second'], '/s, errors', r['errors'], 'p50', r['operation_time']['p50_us'], 'us p99', r['operation_time']['p99_us'], 'us')"
    taskset -c 1 target/release/switchboard-load --quiet --json --url "$A" churn --workers 16 --duration 5 \
        --resume-sessions |
        python3 -c "import json,sys; r=json.load(sys.stdin); print('run $run resumes on the same node (cluster):', r['operations_per_second'], '/s, errors', r['errors'], 'p50', r['operation_time']['p50_us'], 'us p99', r['operation_time']['p99_us'], 'us')"
done
