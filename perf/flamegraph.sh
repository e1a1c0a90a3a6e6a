#!/usr/bin/env bash
# Records a CPU flamegraph of a server while a load scenario runs.
#
# Usage: perf/flamegraph.sh [PRESET] [twitchy-perf run flags...]
#   e.g. perf/flamegraph.sh fanout --quick
# Writes perf/out/flamegraph-PRESET.svg (and the raw perf data beside it), and prints how the samples split between
# the kernel and user space.
#
# Settings (environment):
#   FLAMEGRAPH_SERVER      twitchy (default), naive (the baseline) or batched (twitchy with --write-delay-ms 100);
#                          anything but twitchy adds its name to the file names.
#   FLAMEGRAPH_PINNED=1    the server alone on CPU 1 (twitchy with one shard), the load generator on CPU 0, as in
#                          perf/core-bench.sh.
#   FLAMEGRAPH_CALL_GRAPH  dwarf (default) or fp.
#   FLAMEGRAPH_SUFFIX      added to the file names (e.g. -before).
#
# Sampling uses `perf record -F 999` (the software cpu-clock event works in this container) with DWARF call graphs,
# since release builds keep line tables but no frame pointers. FLAMEGRAPH_CALL_GRAPH=fp uses frame pointers instead
# (smaller data, shallower user stacks; kernel stacks are whole either way). `perf` comes from the linux-perf package
# and `inferno` from crates.io; both are installed if missing.
set -euo pipefail
cd "$(dirname "$0")/.."

preset=${1:-average}
shift || true
server=${FLAMEGRAPH_SERVER:-twitchy}
pinned=${FLAMEGRAPH_PINNED:-0}

OUT_DIR=perf/out
mkdir -p "$OUT_DIR"
# shellcheck source=perf/servers.sh
source perf/servers.sh
DATA_DIR=$(mktemp -d /tmp/twitchy-flame-data.XXXXXX)
perf_pid=""
cleanup() {
    [ -n "$perf_pid" ] && kill -INT "$perf_pid" 2>/dev/null || true
    stop_servers
    rm -rf "$DATA_DIR" "$DATA_DIR.rooms.toml"
}
trap cleanup EXIT

if ! command -v perf >/dev/null; then
    apt-get install -y linux-perf >&2
fi
if ! command -v inferno-flamegraph >/dev/null; then
    cargo install inferno --locked >&2
fi

cargo build --release -p twitchy-engine -p twitchy-perf

server_cpu=() loadgen_cpu=() shards=2
if [ "$pinned" = 1 ]; then
    server_cpu=(taskset -c 1) loadgen_cpu=(taskset -c 0) shards=1
fi
mapfile -t engine_args < <(TWITCHY_SHARDS=$shards twitchy_args "$DATA_DIR")
[ "$pinned" = 1 ] && engine_args+=(--cpus 1)
case "$server" in
twitchy) start_server "$server" "${server_cpu[@]}" "$BIN"/twitchy "${engine_args[@]}" ;;
batched) start_server "$server" "${server_cpu[@]}" "$BIN"/twitchy "${engine_args[@]}" --write-delay-ms 100 ;;
naive)
    start_server "$server" "${server_cpu[@]}" "$BIN"/twitchy-naive --http 127.0.0.1:0 --irc 127.0.0.1:0 \
        "${LOAD_RATE_LIMIT_ARGS[@]}"
    ;;
*)
    echo "unknown FLAMEGRAPH_SERVER $server" >&2
    exit 2
    ;;
esac
pid_var="${server}_PID" target_var="${server}_TARGET"

name="$preset${FLAMEGRAPH_SUFFIX:-}"
[ "$server" != twitchy ] && name="$preset-$server${FLAMEGRAPH_SUFFIX:-}"
data="$OUT_DIR/flamegraph-$name.perf.data"
case "${FLAMEGRAPH_CALL_GRAPH:-dwarf}" in
fp) call_graph=(-g) ;;
*) call_graph=(--call-graph dwarf,16384) ;;
esac
perf record -F 999 "${call_graph[@]}" -p "${!pid_var}" -o "$data" 2>"$OUT_DIR/perf-record.log" &
perf_pid=$!
sleep 0.5

"${loadgen_cpu[@]}" "$BIN"/twitchy-perf run --preset "$preset" --target "${!target_var}" --out "$OUT_DIR" \
    --no-progress "$@" >"$OUT_DIR/flamegraph-$name.json"

kill -INT "$perf_pid"
wait "$perf_pid" || true
perf_pid=""

svg="$OUT_DIR/flamegraph-$name.svg"
perf script -i "$data" 2>/dev/null | inferno-collapse-perf >"$OUT_DIR/flamegraph-$name.folded"
inferno-flamegraph --title "$server under $preset" <"$OUT_DIR/flamegraph-$name.folded" >"$svg"
echo "wrote $svg" >&2
# Kernel or user: where each sample's innermost frame was.
perf report -i "$data" --no-children --sort dso --stdio 2>/dev/null |
    awk '/^ +[0-9.]+%/ { share = $1 + 0; if ($2 == "[kernel.kallsyms]") kernel += share; else user += share }
         END { printf "samples in the kernel: %.1f%%, in user space: %.1f%%\n", kernel, user }' >&2
stall_count=$(grep -ci stall "$OUT_DIR/$server.log" || true)
echo "stall-detector lines in the server log: $stall_count" >&2
