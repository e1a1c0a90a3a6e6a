#!/usr/bin/env bash
# The engine-core comparisons: Twitchy against the naive baseline in one run, with the CPUs assigned on purpose.
#
#   pinned     each server alone on CPU 1 (Twitchy with one shard there), the load generator on CPU 0:
#              1 room x 1000 WebSocket viewers x 20 msg/s; server CPU per delivery (and its kernel share) and
#              latency. `batched` is Twitchy with --write-delay-ms 100: a busy room's lines wait up to 100 ms so
#              each write carries several; `batched-200` (pinned only) the same with 200 ms.
#   shared     the same load with server and load generator both on CPU 0 (the neighbour case on one core).
#   saturation pinned as above, rising rates into the 1000-viewer room; the highest deliveries/s each server
#              sustains with p99 <= 100 ms and nothing lost.
#   neighbour  servers on both CPUs (Twitchy: two shards), the load generator also on CPU 0, 200 msg/s into a
#              1000-viewer room.
#   memory     idle WebSocket connections, server RSS per connection.
#
# Usage: perf/core-bench.sh [--quick]   (quick: smaller rooms and short runs, for CI)
# Writes JSON reports to perf/out/core/ and a Markdown table to perf/out/core/SUMMARY.md.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
[ "${1:-}" = "--quick" ] && quick=1
OUT_DIR=perf/out/core
mkdir -p "$OUT_DIR"
rm -f "$OUT_DIR"/*.json
# shellcheck source=perf/servers.sh
source perf/servers.sh
DATA_DIR=$(mktemp -d /tmp/twitchy-core-bench.XXXXXX)
cleanup() {
    stop_servers
    rm -rf "$DATA_DIR" "$DATA_DIR.rooms.toml" "$DATA_DIR-batched" "$DATA_DIR-batched.rooms.toml" \
        "$DATA_DIR-batched-200" "$DATA_DIR-batched-200.rooms.toml"
}
trap cleanup EXIT

viewers=1000 duration_ms=20000 rates="50 100 200 250 300 350 400" connections=15000
if [ "$quick" = 1 ]; then
    viewers=200 duration_ms=3000 rates="50 200" connections=1000
fi
progress=(--no-progress)

cargo build --release -p twitchy-engine -p twitchy-perf

naive_args=(--http 127.0.0.1:0 --irc 127.0.0.1:0 "${LOAD_RATE_LIMIT_ARGS[@]}")
mapfile -t engine_args < <(TWITCHY_SHARDS=1 twitchy_args "$DATA_DIR")

fanout() { # NAME RATE LOADGEN_CPU TARGET...
    local name=$1 rate=$2 cpu=$3
    shift 3
    local targets=()
    for t in "$@"; do targets+=(--target "$t"); done
    taskset -c "$cpu" "$BIN"/twitchy-perf run --name "$name" --transport ws --rooms 1 \
        --viewers-per-room "$viewers" --senders-per-room 10 --slow-viewers-per-room 0 --rate "$rate" \
        --duration-ms "$duration_ms" "${targets[@]}" --out "$OUT_DIR" "${progress[@]}" >/dev/null
}

# Each server alone on CPU 1.
start_server twitchy taskset -c 1 "$BIN"/twitchy "${engine_args[@]}" --cpus 1
start_server naive taskset -c 1 "$BIN"/twitchy-naive "${naive_args[@]}"
mapfile -t batched_args < <(TWITCHY_SHARDS=1 twitchy_args "$DATA_DIR-batched")
start_server batched taskset -c 1 "$BIN"/twitchy "${batched_args[@]}" --cpus 1 --write-delay-ms 100
mapfile -t batched_200_args < <(TWITCHY_SHARDS=1 twitchy_args "$DATA_DIR-batched-200")
start_server batched_200 taskset -c 1 "$BIN"/twitchy "${batched_200_args[@]}" --cpus 1 --write-delay-ms 200
fanout pinned 20 0 "$twitchy_TARGET" "$naive_TARGET" "$batched_TARGET" "${batched_200_TARGET/batched_200=/batched-200=}"
kill -TERM "$batched_200_PID" # only the pinned comparison runs it
for rate in $rates; do
    fanout "saturation-$rate" "$rate" 0 "$twitchy_TARGET" "$naive_TARGET" "$batched_TARGET" || true
done
"$BIN"/twitchy-perf memory --connections "$connections" --target "$twitchy_TARGET" \
    --target "$naive_TARGET" --out "$OUT_DIR" "${progress[@]}" >/dev/null || true
stop_servers

# Server and load generator share CPU 0.
rm -rf "$DATA_DIR"
start_server twitchy taskset -c 0 "$BIN"/twitchy "${engine_args[@]}" --cpus 0
start_server naive taskset -c 0 "$BIN"/twitchy-naive "${naive_args[@]}"
fanout shared 20 0 "$twitchy_TARGET" "$naive_TARGET"
stop_servers

# Servers on both CPUs, the load generator on CPU 0 too.
rm -rf "$DATA_DIR"
mapfile -t engine_args < <(TWITCHY_SHARDS=2 twitchy_args "$DATA_DIR")
start_server twitchy "$BIN"/twitchy "${engine_args[@]}"
start_server naive "$BIN"/twitchy-naive "${naive_args[@]}"
fanout neighbour 200 0 "$twitchy_TARGET" "$naive_TARGET"
stop_servers

python3 perf/core_summary.py "$OUT_DIR" >"$OUT_DIR/SUMMARY.md"
cat "$OUT_DIR/SUMMARY.md"
