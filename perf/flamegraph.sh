#!/usr/bin/env bash
# Records a CPU flamegraph of the engine while a load scenario runs.
#
# Usage: perf/flamegraph.sh [PRESET] [twitchy-perf run flags...]
#   e.g. perf/flamegraph.sh fanout --quick
# Writes perf/out/flamegraph-PRESET.svg (and the raw perf data beside it).
#
# Sampling uses `perf record -F 999` (the software cpu-clock event works in
# this container) with DWARF call graphs, since release builds keep line
# tables but no frame pointers. Set FLAMEGRAPH_CALL_GRAPH=fp to use frame
# pointers instead (smaller data, shallower stacks). `perf` comes from the
# linux-perf package and `inferno` from crates.io; both are installed if
# missing.
set -euo pipefail
cd "$(dirname "$0")/.."

preset=${1:-average}
shift || true

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

mapfile -t engine_args < <(twitchy_args "$DATA_DIR")
start_server twitchy target/release/twitchy "${engine_args[@]}"

data="$OUT_DIR/flamegraph-$preset.perf.data"
case "${FLAMEGRAPH_CALL_GRAPH:-dwarf}" in
fp) call_graph=(-g) ;;
*) call_graph=(--call-graph dwarf,16384) ;;
esac
perf record -F 999 "${call_graph[@]}" -p "$twitchy_PID" -o "$data" 2>"$OUT_DIR/perf-record.log" &
perf_pid=$!
sleep 0.5

target/release/twitchy-perf run --preset "$preset" --target "$twitchy_TARGET" --out "$OUT_DIR" "$@" >/dev/null

kill -INT "$perf_pid"
wait "$perf_pid" || true
perf_pid=""

svg="$OUT_DIR/flamegraph-$preset.svg"
perf script -i "$data" 2>/dev/null | inferno-collapse-perf | inferno-flamegraph \
    --title "twitchy under $preset" >"$svg"
echo "wrote $svg" >&2
stall_count=$(grep -ci stall "$OUT_DIR/twitchy.log" || true)
echo "stall-detector lines in the server log: $stall_count" >&2
