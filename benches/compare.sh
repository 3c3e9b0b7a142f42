#!/usr/bin/env bash
# Like-for-like comparison with the tutorial's own server, in one sitting:
# the same load (one side of each pair initiates, the other echoes, one
# signal per WebSocket message) against
#   - switchboard, binary protocol (/ws)
#   - switchboard, seed 001's JSON dialect (/compat/pair)
#   - seed 001's Node.js `ws` server (benches/seed001-node, installed here
#     with npm)
# at 1 and 100 pairs. Each server runs pinned to CPU 0, the load generator
# to CPU 1. Prints one Markdown table row per run.
#
#   benches/compare.sh [seconds per run, default 8]
#
# Then the servers' memory per idle connection at 15,000 connections.
#
# Not yet compared: matchbox_server (the load generator has no matchbox
# dialect yet).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-8}
command -v node >/dev/null || { echo "compare: node is needed for the seed 001 server" >&2; exit 1; }
cargo build --release --workspace --bins -q
(cd benches/seed001-node && npm install --no-audit --no-fund --silent)
LOAD=target/release/switchboard-load
PORT=${PORT:-18800}
# Servers this script started go with it, however it ends.
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT

row() { # name, server pid, load args...
    local name=$1 pid=$2
    shift 2
    taskset -c 1 "$LOAD" --quiet --json --server-pid "$pid" "$@" >/tmp/compare-run.json
    python3 - "$name" /tmp/compare-run.json <<'PY'
import json, sys
r = json.load(open(sys.argv[2]))
cpu = r["server_us_per_message"] or {"user": "-", "kernel": "-"}
rtt, share = r["round_trip"], r["cpu"]
print("| {} | {} | {:,} | {} + {} | {} / {} | {}% / {}% | {} |".format(
    sys.argv[1], r["pairs"], r["relayed_per_second"], cpu["user"], cpu["kernel"],
    rtt["p50_us"], rtt["p99_us"], share["server_cpu_percent"], share["loadgen_cpu_percent"], r["lost"]))
PY
}

wait_port() {
    for _ in $(seq 100); do
        # The server this run started, not a leftover on the same port.
        kill -0 "$2" 2>/dev/null || { echo "compare: the server on $1 did not start" >&2; exit 1; }
        (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return
        sleep 0.05
    done
    echo "compare: nothing listens on $1" >&2
    exit 1
}

echo "| server | pairs | messages/s | server µs/msg user + kernel | RTT p50 / p99 µs | server / load-gen CPU | lost |"
echo "|---|---:|---:|---|---|---|---:|"
for pairs in 1 100; do
    taskset -c 0 target/release/switchboard --listen "127.0.0.1:$PORT" \
        --rate-per-second 100000000 --rate-burst 100000000 \
        --rate-bytes-per-second 4000000000 --rate-bytes-burst 4000000000 \
        --max-connections-per-ip 1000000 --log-level warn >/dev/null 2>&1 &
    server=$!
    wait_port "$PORT" "$server"
    row "switchboard, binary (/ws)" "$server" --url "ws://127.0.0.1:$PORT/ws" \
        relay --pairs "$pairs" --window 1 --duration "$DURATION"
    row "switchboard, seed 001 JSON (/compat/pair)" "$server" --url "ws://127.0.0.1:$PORT/compat/pair" \
        seed001 --pairs "$pairs" --window 1 --duration "$DURATION"
    kill "$server"
    wait "$server" 2>/dev/null || true
    PORT=$((PORT + 1))

    taskset -c 0 node benches/seed001-node/server.js "$PORT" >/dev/null 2>&1 &
    node=$!
    wait_port "$PORT" "$node"
    row "seed 001's Node.js ws server" "$node" --url "ws://127.0.0.1:$PORT/" \
        seed001 --pairs "$pairs" --window 1 --duration "$DURATION"
    kill "$node"
    wait "$node" 2>/dev/null || true
    PORT=$((PORT + 1))
done

# Idle memory: 15,000 connections, each joined to a pair room with its
# neighbour, held; the server's RSS growth per connection.
ulimit -n "$(ulimit -Hn)"
idle() { # name, server pid, url, extra args...
    local name=$1 pid=$2 url=$3
    shift 3
    taskset -c 1 "$LOAD" --quiet --json --server-pid "$pid" --url "$url" --source-ips 8 \
        idle --connections 15000 "$@" >/tmp/compare-idle.json
    python3 - "$name" /tmp/compare-idle.json <<'PY'
import json, sys
r = json.load(open(sys.argv[2]))
print("| {} | {:,} | {:,} | {:,} |".format(sys.argv[1], r["established"],
      r["server_rss_per_connection_bytes"], r["server_rss_after_kib"]))
PY
}
echo
echo "| server, 15,000 idle connections in pair rooms | established | server RSS per connection (bytes) | server RSS (KiB) |"
echo "|---|---:|---:|---:|"
for kind in binary compat; do
    taskset -c 0 target/release/switchboard --listen "127.0.0.1:$PORT" \
        --max-connections-per-ip 1000000 --log-level warn >/dev/null 2>&1 &
    server=$!
    wait_port "$PORT" "$server"
    if [ "$kind" = binary ]; then
        idle "switchboard, binary (/ws; also logged in)" "$server" "ws://127.0.0.1:$PORT/ws"
    else
        idle "switchboard, seed 001 JSON (/compat/pair)" "$server" "ws://127.0.0.1:$PORT/compat/pair" --seed001
    fi
    kill "$server"
    wait "$server" 2>/dev/null || true
    PORT=$((PORT + 1))
done
taskset -c 0 node benches/seed001-node/server.js "$PORT" >/dev/null 2>&1 &
node=$!
wait_port "$PORT" "$node"
idle "seed 001's Node.js ws server" "$node" "ws://127.0.0.1:$PORT/" --seed001
kill "$node"
wait "$node" 2>/dev/null || true

echo
echo "matchbox_server: not run (switchboard-load has no matchbox dialect yet)."
