#!/usr/bin/env bash
# The reconnect storm: NODES switchboard nodes on one Redis and a fleet
# whose first node holds ON_KILLED clients (each the member A of a pair
# whose B is on another node; the other pairs span two of the others).
# After the hold the fleet kills the first node (SIGKILL); every one of its
# clients notices, reconnects to another node with the client crate's
# backoff and jitter, logs in under its old name (answered NAME_TAKEN until
# a survivor reaps the dead node's lease) and rejoins its room, and its
# partner sees it leave and come back. STREAM_PAIRS pairs send signals both
# ways throughout, and every signal is accounted for. Then NEGOTIATE pairs
# negotiate across the survivors.
#
#   benches/storm.sh [connections] [on the killed node] [nodes]   (default 55000 19000 5)
#
# Environment: HOLD (s, 20), NEGOTIATE (200), STREAM_PAIRS (100),
# SIGNAL_INTERVAL_MS (100), BACKOFF_INITIAL_MS (100) and BACKOFF_MAX_MS
# (10000) (the client crate's defaults), STORM_TIMEOUT (s, 300),
# SOURCE_IPS (64), WORKERS (0: one per 18,000 clients), CONCURRENCY (32),
# NODE_ARGS (more node flags: by default the nodes' own lease (3 s) and
# Redis timeout (1 s), and heartbeats every 30 s), and those of
# benches/fleet-lib.sh (the memory budget, the watchdog, BASE_PORT,
# REDIS_NICE).
#
# It reads the CPU time of every node, Redis and the load generator when
# the node dies and when the last client is back, and prints each one's
# share of that window, so the table says who was the bottleneck; and the
# survivors' warnings (a lease not renewed in time would show there).
set -euo pipefail
cd "$(dirname "$0")/.."

CONNECTIONS=${1:-55000}
ON_KILLED=${2:-19000}
NODES=${3:-5}
HOLD=${HOLD:-20}
NEGOTIATE=${NEGOTIATE:-200}
STREAM_PAIRS=${STREAM_PAIRS:-100}
SIGNAL_INTERVAL_MS=${SIGNAL_INTERVAL_MS:-100}
BACKOFF_INITIAL_MS=${BACKOFF_INITIAL_MS:-100}
BACKOFF_MAX_MS=${BACKOFF_MAX_MS:-10000}
STORM_TIMEOUT=${STORM_TIMEOUT:-300}
SOURCE_IPS=${SOURCE_IPS:-64}
WORKERS=${WORKERS:-0}
CONCURRENCY=${CONCURRENCY:-32}
NODE_ARGS=${NODE_ARGS:---heartbeat-interval-ms 30000 --heartbeat-timeout-ms 90000}

(( CONNECTIONS % 2 == 0 )) || { echo "connections must be even (pairs)" >&2; exit 2; }
(( NODES >= 3 )) || { echo "a storm needs three nodes or more" >&2; exit 2; }
(( ON_KILLED <= 19500 && ON_KILLED <= CONNECTIONS / 2 )) ||
    { echo "at most 19,500 clients (the open-files limit), and half of all, on the killed node" >&2; exit 2; }
# The killed node's clients come back on the survivors, which then hold
# all clients between them.
if (( CONNECTIONS / (NODES - 1) > 19500 )); then
    echo "$CONNECTIONS clients over $((NODES - 1)) survivors is more than 19,500 a node (the open-files limit): use more nodes" >&2
    exit 2
fi
# shellcheck source=benches/fleet-lib.sh
. benches/fleet-lib.sh
fleet_budget
fleet_setup storm
fleet_start_redis
fleet_start_nodes storm
fleet_watchdog

echo "== fleet: $CONNECTIONS clients ($ON_KILLED on node 1, pid ${nodes[0]}), $workers workers, hold ${HOLD}s," \
     "$STREAM_PAIRS streaming pairs, $NEGOTIATE negotiations after, $SOURCE_IPS source addresses"
target/release/switchboard-load --source-ips "$SOURCE_IPS" --json fleet --nodes "$nodes_csv" \
    --connections "$CONNECTIONS" --workers "$WORKERS" --connect-concurrency "$CONCURRENCY" \
    --hold "$HOLD" --negotiate "$NEGOTIATE" --phase-file "$tmp/phase" \
    --kill-pid "${nodes[0]}" --storm-clients "$ON_KILLED" --stream-pairs "$STREAM_PAIRS" \
    --signal-interval-ms "$SIGNAL_INTERVAL_MS" --backoff-initial-ms "$BACKOFF_INITIAL_MS" \
    --backoff-max-ms "$BACKOFF_MAX_MS" --storm-timeout "$STORM_TIMEOUT" >"$tmp/report.json" &
FLEET=$!
echo "$FLEET" >"$tmp/fleet.pid"

# CPU of each process from the kill to the last client back.
survivors=("${nodes[@]:1}")
sample() {
    local p out=""
    for p in "${survivors[@]}" "$REDIS"; do out+="$(ticks "$p") "; done
    out+="$(ticks "$FLEET" "${workers_pids[@]}") "
    read -r b t < <(busy)
    echo "$out$b $t $(date +%s.%N)"
}
while kill -0 "$FLEET" 2>/dev/null && [ "$(phase)" != arming ]; do sleep 0.2; done
workers_pids=($(pgrep -P "$FLEET" || true))
while kill -0 "$FLEET" 2>/dev/null && [ "$(phase)" = arming ]; do sleep 0.05; done
before=$(sample)
while kill -0 "$FLEET" 2>/dev/null && [ "$(phase)" = storm ]; do sleep 0.1; done
after=$(sample)
# The survivors' logs as they were when the last client was back (the
# fleet's exit, when every client leaves at once, writes its own).
for i in $(seq 2 "$NODES"); do cp "$tmp/node-$i.log" "$tmp/node-$i.storm.log"; done
fleet_wait
echo "== warnings and errors in the survivors' logs, from the start to the last client back"
for i in $(seq 2 "$NODES"); do
    echo "node $i: $(grep -c -E 'WARN|ERROR' "$tmp/node-$i.storm.log" || true) lines"
    sed -E 's/\x1b\[[0-9;]*m//g' "$tmp/node-$i.storm.log" | grep -E 'WARN|ERROR' |
        sed -E 's/^[^ ]+ +//; s/[0-9]{2,}/N/g' | sort | uniq -c | sort -rn | head -5 || true
done

python3 - "$tmp/report.json" "$NODES" "$TICK" "$before" "$after" <<'EOF'
import json, sys
a = sys.argv[1:]
try:
    r = json.load(open(a[0]))
except Exception:
    r = {}
nodes, tick = int(a[1]), float(a[2])
before, after = [float(x) for x in a[3].split()], [float(x) for x in a[4].split()]
s = r.get("storm") or {}
ms = lambda l, d=1e6, u="s": f"p50 {l.get('p50_us', 0) / d:.1f} {u}, p99 {l.get('p99_us', 0) / d:.1f} {u}, max {l.get('max_us', 0) / d:.1f} {u}"
at = s.get("attempts", {})
pa = s.get("partners", {})
sig = s.get("signals", {})
def lost_window(t):
    w = t.get("lost_sent_after_kill_ms")
    return f" (sent {w[0]:.1f} to {w[1]:.1f} ms after the kill)" if w else ""
def way(t):
    codes = ", ".join(f"{k} {v}" for k, v in t.get("told_codes", {}).items()) or "none"
    return (f"{t.get('sent', 0):,} sent: {t.get('delivered', 0):,} delivered, {t.get('told_undelivered', 0):,} told undelivered ({codes}), "
            f"{t.get('lost_with_senders_connection', 0)} lost with the sender's cut connection, {t.get('silently_lost', 0)} silently lost{lost_window(t)}; "
            f"duplicates {t.get('duplicates', 0)}, misrouted {t.get('misrouted', 0)}, damaged {t.get('damaged', 0)}")
neg = r.get("negotiations", {})
rows = [
    ("clients joined", f"{r.get('established', 0):,} of {r.get('connections', 0):,} over {nodes} nodes ({r.get('errors', 0)} errors), {r.get('workers', 0)} load processes"),
    ("on the killed node", f"{s.get('clients_on_killed_node', 0):,} ({s.get('went_down', 0):,} went down, {s.get('came_back', 0):,} came back{', TIMED OUT' if s.get('timed_out') else ''})"),
    ("kill to the last one back", f"{s.get('time_to_all_back_s', 0):.1f} s"),
    ("each: kill to back in its room", ms(s.get("back_after_kill", {}))),
    ("each: kill to noticing", ms(s.get("noticed_after_kill", {}), 1e3, "ms")),
    ("connects (failed)", f"{at.get('connects', 0):,} ({at.get('connect_failures', 0):,})"),
    ("logins (NAME_TAKEN / other refusals)", f"{at.get('logins', 0):,} ({at.get('names_taken', 0):,} / {at.get('login_failures', 0):,})"),
    ("joins (refused)", f"{at.get('joins', 0):,} ({at.get('join_failures', 0):,})"),
    ("partners: saw leave / saw back", f"{pa.get('saw_left', 0):,} / {pa.get('saw_back', 0):,} (back before the leave {pa.get('back_before_leave', 0)}, leave twice {pa.get('left_twice', 0)}, stray leaves {pa.get('stray_leaves', 0)}, gone at the end {pa.get('gone_at_the_end', 0)})"),
    ("open after the storm", f"{s.get('open_after', 0):,}"),
    (f"signals from the killed node's clients ({sig.get('streaming_pairs', 0)} pairs)", way(sig.get("from_killed_node_clients", {}))),
    ("signals to them", way(sig.get("to_killed_node_clients", {}))),
    ("negotiations after", f"{neg.get('completed', 0)} of {neg.get('asked', 0)} complete; lost {neg.get('lost_messages')}"),
]
if len(before) == len(after) and len(before) == nodes + 4:
    wall = after[-1] - before[-1]
    cpu = lambda i: f"{(after[i] - before[i]) / tick / wall * 100:.0f}%"
    shares = ", ".join(f"node {k + 2} {cpu(k)}" for k in range(nodes - 1))
    busy = (after[-3] - before[-3]) / max(after[-2] - before[-2], 1) * 100
    rows.append((f"CPU, kill to last back ({wall:.1f} s)",
                 f"{shares}, Redis {cpu(nodes - 1)}, load {cpu(nodes)} (of one core); machine {busy:.0f}% busy of 2 cores"))
width = max(len(k) for k, _ in rows)
print()
for k, v in rows:
    print(f"{k:<{width}}  {v}")
for t in (sig.get("from_killed_node_clients", {}), sig.get("to_killed_node_clients", {})):
    for l in t.get("lost_samples", []):
        print("silently lost:", l)
print("result:", "OK" if r.get("ok") else "NOT OK")
EOF
exit "$status"
