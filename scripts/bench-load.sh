#!/usr/bin/env bash
# Runs the load-generator scenarios of BENCHMARKS.md against a release
# server pinned to CPU 0, with the load generator pinned to CPU 1.
#
#   scripts/bench-load.sh [scenario...]     (default: all)
#
# Scenarios: relay1 relay16 pair (what browsers send: one side initiates,
# one frame per WebSocket message), relay1-sdk relay16-sdk (both sides
# initiate, frames coalesced: a pattern that flatters the server), pair-busy,
# handshake handshake-reuse idle churn
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --bins -q
PORT=${PORT:-18700}
# Another server binary (say, an older build) to compare against.
SERVER_BIN=${SERVER_BIN:-target/release/switchboard}
URL="ws://127.0.0.1:$PORT/ws"
ulimit -n "$(ulimit -Hn)"

start_server() {
    # Rate limits off: the load generator is one client sending far more
    # than a browser would.
    taskset -c 0 "$SERVER_BIN" --listen "127.0.0.1:$PORT" \
        --rate-per-second 100000000 --rate-burst 100000000 \
        --rate-bytes-per-second 2000000000 --rate-bytes-burst 2000000000 \
        --max-connections-per-ip 1000000 "$@" >/tmp/switchboard-bench.log 2>&1 &
    SERVER=$!
    for _ in $(seq 50); do
        curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && return
        sleep 0.1
    done
    echo "server did not start" >&2
    exit 1
}
stop_server() { kill "$SERVER"; wait "$SERVER" 2>/dev/null || true; }

load() {
    echo "== switchboard-load $*" >&2
    taskset -c 1 target/release/switchboard-load --url "$URL" --quiet --server-pid "$SERVER" "$@"
}

scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(relay1 relay16 relay1-sdk relay16-sdk pair handshake handshake-reuse churn idle)
for s in "${scenarios[@]}"; do
    start_server
    case "$s" in
        relay1) load relay --pairs 100 --window 1 --duration 10 ;;
        relay16) load relay --pairs 100 --window 16 --duration 10 ;;
        relay1-sdk) load relay --pairs 100 --window 1 --duration 10 --both-sides --coalesce ;;
        relay16-sdk) load relay --pairs 100 --window 16 --duration 10 --both-sides --coalesce ;;
        pair) load relay --pairs 1 --window 1 --duration 10 ;;
        pair-busy) load relay --pairs 1 --window 1 --duration 10 --busy-poll ;;
        handshake) load handshake --size 2 --concurrency 64 --duration 10 ;;
        handshake-reuse) load handshake --size 2 --concurrency 64 --duration 10 --reuse-connections ;;
        churn) load churn --workers 32 --duration 10 ;;
        idle) load idle --connections 15000 --source-ips 8 ;;
        *) echo "unknown scenario $s" >&2; exit 2 ;;
    esac
    stop_server
done
