#!/usr/bin/env bash
# Like-for-like comparison with peers, in one sitting: the same load (one
# side of each pair initiates, the other echoes, one signal per WebSocket
# message) against
#   - switchboard, binary protocol (/ws)
#   - switchboard, seed 001's JSON dialect (/compat/pair)
#   - seed 001's Node.js `ws` server (benches/seed001-node, installed here
#     with npm)
#   - matchbox_server (Rust, axum; installed here from crates.io by
#     scripts/install-matchbox.sh, which pins its version), in its own
#     protocol (`switchboard-load matchbox`: each pair in a room of its
#     own, an ICE candidate per signal as matchbox_socket sends it). If it
#     cannot be installed, the script says so and compares the others.
# at 1 and 100 pairs. Each server runs pinned to CPU 0, the load generator
# to CPU 1. Prints one Markdown table row per run.
#
#   benches/compare.sh [seconds per run, default 8]
#
# Then the servers' memory per idle connection at 15,000 connections.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-8}
command -v node >/dev/null || { echo "compare: node is needed for the seed 001 server" >&2; exit 1; }
cargo build --release --workspace --bins -q
(cd benches/seed001-node && npm install --no-audit --no-fund --silent)
LOAD=target/release/switchboard-load
if installed=$(scripts/install-matchbox.sh); then
    read -r MATCHBOX MATCHBOX_VERSION <<<"$installed"
else
    MATCHBOX=
    echo "compare: could not install matchbox_server (see above); comparing the others without it" >&2
fi
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

# Starts a server (the command, with $PORT in it) on CPU 0 as $srv and
# waits until it listens; stop ends it and moves on to the next port.
start() {
    taskset -c 0 "$@" >/dev/null 2>&1 &
    srv=$!
    wait_port "$PORT" "$srv"
}
stop() {
    kill "$srv"
    wait "$srv" 2>/dev/null || true
    PORT=$((PORT + 1))
}
switchboard() { # extra flags...
    start target/release/switchboard --listen "127.0.0.1:$PORT" \
        --max-connections-per-ip 1000000 --log-level warn "$@"
}
node_server() { start node benches/seed001-node/server.js "$PORT"; }
matchbox() { start env RUST_LOG=warn "$MATCHBOX" "127.0.0.1:$PORT"; }

echo "| server | pairs | messages/s | server µs/msg user + kernel | RTT p50 / p99 µs | server / load-gen CPU | lost |"
echo "|---|---:|---:|---|---|---|---:|"
for pairs in 1 100; do
    run=(--pairs "$pairs" --window 1 --duration "$DURATION")
    switchboard --rate-per-second 100000000 --rate-burst 100000000 \
        --rate-bytes-per-second 4000000000 --rate-bytes-burst 4000000000
    row "switchboard, binary (/ws)" "$srv" --url "ws://127.0.0.1:$PORT/ws" relay "${run[@]}"
    row "switchboard, seed 001 JSON (/compat/pair)" "$srv" \
        --url "ws://127.0.0.1:$PORT/compat/pair" seed001 "${run[@]}"
    stop

    node_server
    row "seed 001's Node.js ws server" "$srv" --url "ws://127.0.0.1:$PORT/" seed001 "${run[@]}"
    stop

    if [ -n "$MATCHBOX" ]; then
        matchbox
        row "matchbox_server $MATCHBOX_VERSION" "$srv" --url "ws://127.0.0.1:$PORT" matchbox "${run[@]}"
        stop
    fi
done

# Idle memory: 15,000 connections, each joined to a pair room with its
# neighbour, held; the server's RSS growth per connection (sources spread
# over 127.0.0.1-8, so no source address runs out of ports).
ulimit -n "$(ulimit -Hn)"
idle() { # name, url, extra args... (against $srv)
    local name=$1 url=$2
    shift 2
    taskset -c 1 "$LOAD" --quiet --json --server-pid "$srv" --url "$url" --source-ips 8 \
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
switchboard
idle "switchboard, binary (/ws; also logged in)" "ws://127.0.0.1:$PORT/ws"
stop
switchboard
idle "switchboard, seed 001 JSON (/compat/pair)" "ws://127.0.0.1:$PORT/compat/pair" --seed001
stop
node_server
idle "seed 001's Node.js ws server" "ws://127.0.0.1:$PORT/" --seed001
stop
if [ -n "$MATCHBOX" ]; then
    matchbox
    idle "matchbox_server $MATCHBOX_VERSION" "ws://127.0.0.1:$PORT" --matchbox
    stop
else
    echo
    echo "matchbox_server: not run (it could not be installed; see above)."
fi
