#!/usr/bin/env bash
# Runs a switchboard cluster on this machine: one redis-server and three
# nodes sharing it, until Ctrl-C (or SIGTERM), which stops all of them.
#
#   scripts/cluster.sh                         Redis on a unix socket in a temp dir,
#                                              nodes on 127.0.0.1:8081, 8082, 8083
#   scripts/cluster.sh --redis-port [PORT]     Redis on 127.0.0.1:PORT (default 6379) instead
#   scripts/cluster.sh --ports 9001,9002       other node ports (one node per port)
#   scripts/cluster.sh -- --lease-ms 2000      options after -- go to every node
#
# The nodes run ${SWITCHBOARD_BIN:-target/release/switchboard}; without
# SWITCHBOARD_BIN the release binary is built when missing. Needs
# redis-server (apt-get install redis-server). Logs go to files in the temp
# dir (printed at start), which is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

redis_port=
ports=(8081 8082 8083)
node_args=()
while (($#)); do
    case $1 in
    --redis-port)
        if [[ ${2:-} =~ ^[0-9]+$ ]]; then
            redis_port=$2
            shift
        else
            redis_port=6379
        fi
        ;;
    --redis-port=*) redis_port=${1#*=} ;;
    --ports)
        IFS=, read -ra ports <<<"${2:?--ports needs a comma-separated list}"
        shift
        ;;
    --ports=*) IFS=, read -ra ports <<<"${1#*=}" ;;
    --)
        shift
        node_args=("$@")
        break
        ;;
    -h | --help)
        sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "cluster.sh: unknown argument $1 (--help)" >&2
        exit 2
        ;;
    esac
    shift
done
for p in "${ports[@]}" ${redis_port:+"$redis_port"}; do
    [[ $p =~ ^[0-9]+$ ]] && ((p > 0 && p < 65536)) || {
        echo "cluster.sh: bad port '$p'" >&2
        exit 2
    }
done

command -v redis-server >/dev/null 2>&1 || {
    echo "cluster.sh: redis-server not found (apt-get install redis-server)" >&2
    exit 1
}
bin=${SWITCHBOARD_BIN:-target/release/switchboard}
if ! [ -x "$bin" ]; then
    if [ -n "${SWITCHBOARD_BIN:-}" ]; then
        echo "cluster.sh: SWITCHBOARD_BIN=$bin is not an executable" >&2
        exit 1
    fi
    echo "==> building $bin"
    cargo build --release --bin switchboard
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/switchboard-cluster.XXXXXX")
node_pids=()
redis_pid=

# Stops the nodes first (SIGTERM: each drains and leaves the cluster), then
# Redis; SIGKILL for whatever is still there after 10 s.
stop() {
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "cluster.sh: process $pid did not stop in 10 s; killing it" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    local status=$? pid
    trap - EXIT INT TERM
    echo
    echo "==> stopping the nodes and Redis"
    for pid in "${node_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${node_pids[@]}"; do stop "$pid"; done
    [ -z "$redis_pid" ] || stop "$redis_pid"
    rm -rf "$tmp"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The status code of GET http://127.0.0.1:$1$2, or nothing.
http_status() {
    (
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf 'GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' "$2" >&3
        IFS=' ' read -r -t 2 _ code _ <&3 && printf '%s' "$code"
    ) 2>/dev/null || true
}

fail_with_log() {
    echo "cluster.sh: $1; the end of $2:" >&2
    tail -n 20 "$2" >&2 || true
    exit 1
}

# ---------------------------------------------------------------- Redis
# No persistence: a restarted Redis is empty and the nodes write their rooms
# and names back.
redis_args=(--save "" --appendonly no --dir "$tmp" --logfile "$tmp/redis.log")
if [ -n "$redis_port" ]; then
    redis_url="redis://127.0.0.1:$redis_port"
    redis_args+=(--port "$redis_port" --bind 127.0.0.1)
else
    redis_url="unix://$tmp/redis.sock"
    redis_args+=(--port 0 --unixsocket "$tmp/redis.sock" --unixsocketperm 700)
fi
redis-server "${redis_args[@]}" >/dev/null 2>&1 &
redis_pid=$!
for ((i = 0; ; i++)); do
    kill -0 "$redis_pid" 2>/dev/null || fail_with_log "redis-server exited" "$tmp/redis.log"
    if [ -n "$redis_port" ]; then
        (exec 3<>"/dev/tcp/127.0.0.1/$redis_port") 2>/dev/null && break
    else
        [ -S "$tmp/redis.sock" ] && break
    fi
    ((i < 100)) || fail_with_log "redis-server did not start in 10 s" "$tmp/redis.log"
    sleep 0.1
done

# ---------------------------------------------------------------- nodes
for i in "${!ports[@]}"; do
    "$bin" --listen "127.0.0.1:${ports[i]}" --redis-url "$redis_url" "${node_args[@]}" \
        >"$tmp/node$((i + 1)).log" 2>&1 &
    node_pids+=($!)
done
# Ready = /readyz 200: listening, registered in Redis, holding its lease.
for i in "${!ports[@]}"; do
    log="$tmp/node$((i + 1)).log"
    for ((t = 0; ; t++)); do
        kill -0 "${node_pids[i]}" 2>/dev/null || fail_with_log "node $((i + 1)) (port ${ports[i]}) exited" "$log"
        [ "$(http_status "${ports[i]}" /readyz)" = 200 ] && break
        ((t < 300)) || fail_with_log "node $((i + 1)) not ready on port ${ports[i]} after 30 s" "$log"
        sleep 0.1
    done
done

echo "switchboard cluster: ${#ports[@]} nodes ($bin) sharing Redis at $redis_url"
for i in "${!ports[@]}"; do
    printf '  node %d  http://localhost:%s/  ws://localhost:%s/ws  pid %s  log %s\n' \
        $((i + 1)) "${ports[i]}" "${ports[i]}" "${node_pids[i]}" "$tmp/node$((i + 1)).log"
done
if ((${#ports[@]} > 1)); then
    a=${ports[0]} b=${ports[1]}
    cat <<EOF

Two browser tabs on two different nodes reach each other:
  http://localhost:$a/?room=1001&name=Ann   and   http://localhost:$b/?room=1001&name=Bob   (Join)
or log in as Ann on http://localhost:$a/ and as Bob on http://localhost:$b/, and call by name.
EOF
fi
echo
echo "Ctrl-C stops the nodes and Redis."

# Until Ctrl-C / SIGTERM (the traps exit), or until a node dies. Redis may
# go away: the nodes keep their clients (/readyz 503) and write their rooms
# and names back into a Redis started again at the same address.
while :; do
    wait -n "${node_pids[@]}" $redis_pid || true
    for i in "${!node_pids[@]}"; do
        kill -0 "${node_pids[i]}" 2>/dev/null ||
            fail_with_log "node $((i + 1)) (port ${ports[i]}) exited" "$tmp/node$((i + 1)).log"
    done
    if [ -n "$redis_pid" ] && ! kill -0 "$redis_pid" 2>/dev/null; then
        redis_pid=
        echo "cluster.sh: redis-server exited; the nodes keep their clients. Start it again with:" >&2
        printf '  redis-server' >&2
        printf ' %q' "${redis_args[@]}" >&2
        printf '\n(this script will not stop that one)\n' >&2
    fi
done
