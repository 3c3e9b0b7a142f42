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
# connects at once, 32), NODE_ARGS (more node flags; the default lengthens
# the lease, the Redis timeout and the heartbeat for this two-core machine,
# see below), and those of benches/fleet-lib.sh (the memory budget's
# headroom and estimates, the watchdog's floor, BASE_PORT, REDIS_NICE).
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
(( CONNECTIONS % 2 == 0 )) || { echo "connections must be even (pairs)" >&2; exit 2; }
if (( CONNECTIONS / NODES > 19500 )); then
    echo "$CONNECTIONS clients over $NODES nodes is more than 19,500 a node (the open-files limit): use more nodes" >&2
    exit 2
fi
# Two cores for a hundred processes: a node may wait seconds for the CPU.
# With the defaults (3 s lease, 1 s Redis timeout) a starved node misses a
# renewal, is taken for dead and reaped (one script of seconds that stalls
# Redis for everyone), and its clients are closed: a cascade. A 30 s lease
# and 10 s Redis timeout ride it out. Heartbeats every 30 s instead of 15:
# a ping and its pong cost about 34 µs of CPU (node, load generator and
# loopback TCP together), and a million clients pinged every 15 s would
# need 2.3 cores of this machine's 2 (BENCHMARKS.md).
NODE_ARGS=${NODE_ARGS:---lease-ms 30000 --redis-timeout-ms 10000 --heartbeat-interval-ms 30000 --heartbeat-timeout-ms 90000}
# shellcheck source=benches/fleet-lib.sh
. benches/fleet-lib.sh
fleet_budget
fleet_setup million

slab_before=$(kib Slab)
sunreclaim_before=$(kib SUnreclaim)
avail_before=$(kib MemAvailable)

fleet_start_redis
fleet_start_nodes million
nodes_rss_before=$(rss "${nodes[@]}")
redis_before=$(redis_mem)

fleet_watchdog

echo "== fleet: $CONNECTIONS clients, $workers workers, hold ${HOLD}s, $NEGOTIATE negotiations, $SOURCE_IPS source addresses"
target/release/switchboard-load --source-ips "$SOURCE_IPS" --json fleet --nodes "$nodes_csv" \
    --connections "$CONNECTIONS" --workers "$WORKERS" --connect-concurrency "$CONCURRENCY" \
    --hold "$HOLD" --negotiate "$NEGOTIATE" --phase-file "$tmp/phase" >"$tmp/report.json" &
FLEET=$!
echo "$FLEET" >"$tmp/fleet.pid"

# Samples during the hold: one 10 s in, one at most 60 s later.
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
fleet_wait

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
