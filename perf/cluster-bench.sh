#!/usr/bin/env bash
# Three Twitchy nodes sharing every room through a three-server NATS JetStream cluster (R3), all on this machine,
# against one node with the embedded store, under the same load (preset `cluster`: the seed's average rate into
# 3 rooms). The senders use node 1; the cluster's viewers are spread over the three nodes in turn, so two thirds
# of them see each message only after it went node 1 -> the brokers (replicated) -> their node's feed.
#
# Reported per target (perf/out/cluster/SUMMARY.md; a full run also writes perf/CLUSTER_RESULTS.md):
# deliveries/s, lost, end-to-end latency (a sender's PRIVMSG written to a viewer's line read: publish to
# delivery), ack latency, server CPU per delivery (the cluster's: its three nodes and three brokers together), and
# the nodes' own /metrics: publish-to-PubAck latency and each room's consumer lag at the end.
#
# Nothing is pinned: nine processes and the load generator share the machine's CPUs, which is the point (what
# the broker hop costs), not a figure of what one node sustains; see perf/CORE_RESULTS.md for that.
#
# Usage: perf/cluster-bench.sh [--quick]   (quick: 30 viewers per room, 3 s, for CI)
set -euo pipefail
cd "$(dirname "$0")/.."

quick=""
[ "${1:-}" = "--quick" ] && quick="--quick"
OUT_DIR=perf/out/cluster
mkdir -p "$OUT_DIR"
rm -f "$OUT_DIR"/*.json "$OUT_DIR"/*.html "$OUT_DIR"/*.svg "$OUT_DIR"/*.metrics
# shellcheck source=perf/servers.sh
source perf/servers.sh
# The three rooms the preset uses, and no more: every room costs each node one consumer on the brokers.
PERF_ROOMS=3

NATS_BIN=$(command -v nats-server || true)
if [ -z "$NATS_BIN" ]; then
    echo "nats-server is not installed (Debian: apt-get install nats-server)" >&2
    exit 1
fi
WORK=$(mktemp -d /tmp/twitchy-cluster-bench.XXXXXX)
cleanup() {
    stop_servers
    rm -rf "$WORK"
}
trap cleanup EXIT

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
cargo build --release -p twitchy-engine -p twitchy-perf

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_port PORT PID: until something accepts on 127.0.0.1:PORT (30 s at most, while PID lives).
wait_port() {
    for _ in $(seq 1 300); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
            return 0
        fi
        kill -0 "$2" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

# The brokers: three servers, one cluster, JetStream on.
client_ports=() cluster_ports=()
for i in 1 2 3; do
    client_ports+=("$(free_port)")
    cluster_ports+=("$(free_port)")
done
routes=""
for port in "${cluster_ports[@]}"; do
    routes+="\"nats-route://127.0.0.1:$port\", "
done
urls=""
nats_pids=()
for i in 0 1 2; do
    name="n$((i + 1))"
    mkdir -p "$WORK/$name"
    cat >"$WORK/$name.conf" <<EOF
server_name: $name
listen: "127.0.0.1:${client_ports[$i]}"
log_file: "$WORK/$name.log"
jetstream {
  store_dir: "$WORK/$name"
  max_memory_store: 256MB
  max_file_store: 4GB
}
cluster {
  name: twitchy_bench
  listen: "127.0.0.1:${cluster_ports[$i]}"
  routes: [${routes%, }]
}
EOF
    "$NATS_BIN" -c "$WORK/$name.conf" >/dev/null 2>&1 &
    STARTED_PIDS+=("$!")
    nats_pids+=("$!")
    urls+="nats://127.0.0.1:${client_ports[$i]},"
done
urls=${urls%,}
for i in 0 1 2; do
    if ! wait_port "${client_ports[$i]}" "${nats_pids[$i]}"; then
        echo "nats-server n$((i + 1)) did not start; its log:" >&2
        tail -20 "$WORK/n$((i + 1)).log" >&2 || true
        exit 1
    fi
done
echo "NATS cluster up: $urls" >&2

# The nodes (each waits, up to a minute, while the brokers elect their leaders).
READY_WAIT_S=90
for n in 1 2 3; do
    mapfile -t node_args < <(twitchy_args "$WORK/node$n")
    start_server "node$n" "$BIN"/twitchy "${node_args[@]}" --cluster "$urls" --node-id "$n" \
        --cluster-retention-bytes 1073741824
done
mapfile -t single_args < <(twitchy_args "$WORK/single")
start_server single "$BIN"/twitchy "${single_args[@]}"

cluster_target="cluster=$node1_HTTP,irc=$node1_IRC,log=$OUT_DIR/node1.log,pid=$node1_PID,pid=$node2_PID"
cluster_target+=",pid=$node3_PID,viewers=$node1_HTTP;$node2_HTTP;$node3_HTTP"
for pid in "${nats_pids[@]}"; do
    cluster_target+=",pid=$pid"
done
progress=(--no-progress)
"$BIN"/twitchy-perf run --preset cluster $quick --transport ws --target "$cluster_target" \
    --target "$single_TARGET" --out "$OUT_DIR" "${progress[@]}" >/dev/null

for n in 1 2 3; do
    http_var="node${n}_HTTP"
    python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())' \
        "http://${!http_var}/metrics" >"$OUT_DIR/node$n.metrics"
done
stop_servers

python3 perf/cluster_summary.py "$OUT_DIR" >"$OUT_DIR/SUMMARY.md"
if [ -z "$quick" ]; then
    {
        echo "# Cluster benchmark"
        echo
        echo "\`perf/cluster-bench.sh\`, $(date -u +%Y-%m-%d), $(nproc) CPUs, load average before the run: $load_before."
        echo
        cat "$OUT_DIR/SUMMARY.md"
    } >perf/CLUSTER_RESULTS.md
fi
cat "$OUT_DIR/SUMMARY.md"
