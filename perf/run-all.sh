#!/usr/bin/env bash
# Builds the engine and the load generator, starts Twitchy and the naive
# baseline (by pid), runs every scenario against both, measures memory per
# idle connection, runs the criterion benches, writes perf/RESULTS.md and the
# reports under perf/out/, and stops the servers.
#
# Usage: perf/run-all.sh [--quick] [--no-benches] [--no-naive]
#   --quick       short runs of everything (under a minute once built), for CI; writes perf/out/RESULTS-quick.md
#   --no-benches  skip the criterion benches
#   --no-naive    measure Twitchy alone (no ratios)
set -euo pipefail
cd "$(dirname "$0")/.."

quick=""
benches=1
naive=1
for arg in "$@"; do
    case "$arg" in
    --quick) quick="--quick" ;;
    --no-benches) benches=0 ;;
    --no-naive) naive=0 ;;
    *)
        echo "unknown option $arg" >&2
        exit 2
        ;;
    esac
done

OUT_DIR=perf/out
mkdir -p "$OUT_DIR"
rm -f "$OUT_DIR"/*.json "$OUT_DIR"/*.html "$OUT_DIR"/*.svg
# shellcheck source=perf/servers.sh
source perf/servers.sh
DATA_DIR=$(mktemp -d /tmp/twitchy-perf-data.XXXXXX)
cleanup() {
    stop_servers
    rm -rf "$DATA_DIR" "$DATA_DIR.rooms.toml"
}
trap cleanup EXIT

since=$(date +%s)
commands=()
run() {
    commands+=("$*")
    echo "+ $*" >&2
    "$@"
}

run cargo build --release -p twitchy-engine -p twitchy-perf

mapfile -t engine_args < <(twitchy_args "$DATA_DIR")
start_server twitchy "$BIN"/twitchy "${engine_args[@]}"
commands+=("$BIN/twitchy ${engine_args[*]}")
targets=(--target "$twitchy_TARGET")
if [ "$naive" = 1 ]; then
    start_server naive "$BIN"/twitchy-naive --http 127.0.0.1:0 --irc 127.0.0.1:0 \
        "${LOAD_RATE_LIMIT_ARGS[@]}"
    commands+=("$BIN/twitchy-naive --http 127.0.0.1:0 --irc 127.0.0.1:0 ${LOAD_RATE_LIMIT_ARGS[*]}")
    targets+=(--target "$naive_TARGET")
fi

progress=()
[ -t 2 ] || progress=(--no-progress)
failed=()
for preset in average peak fanout many-rooms storm slow; do
    if ! run "$BIN"/twitchy-perf run --preset "$preset" $quick "${targets[@]}" \
        --out "$OUT_DIR" "${progress[@]}" >/dev/null; then
        failed+=("$preset")
    fi
done

connections=5000
[ -n "$quick" ] && connections=500
if ! run "$BIN"/twitchy-perf memory --connections "$connections" "${targets[@]}" \
    --out "$OUT_DIR" "${progress[@]}" >/dev/null; then
    failed+=(memory)
fi

stop_servers

if [ "$benches" = 1 ]; then
    # Every [[bench]] target by name, so the criterion flags below never reach
    # the library's test harness, which would reject them.
    bench_targets=()
    for name in $(sed -n '/^\[\[bench\]\]/,/^name/s/^name *= *"\(.*\)"/\1/p' benches/Cargo.toml); do
        bench_targets+=(--bench "$name")
    done
    if [ -n "$quick" ]; then
        # Benches that size their own groups honour TWITCHY_BENCH_QUICK; the
        # flags shorten the ones that keep criterion's defaults.
        run env TWITCHY_BENCH_QUICK=1 cargo bench -p twitchy-benches "${bench_targets[@]}" -- \
            --warm-up-time 0.1 --measurement-time 0.3 --sample-size 10 || failed+=(benches)
    else
        run cargo bench -p twitchy-benches "${bench_targets[@]}" || failed+=(benches)
    fi
fi

# A quick run proves the tools work; its figures are too short to publish, so it leaves perf/RESULTS.md alone.
results_file=perf/RESULTS.md
[ -n "$quick" ] && results_file="$OUT_DIR/RESULTS-quick.md"
result_args=(--out "$OUT_DIR" --criterion "$TARGET_DIR/criterion" --since "$since" --write "$results_file")
[ -n "$quick" ] && result_args+=(--quick)
for c in "${commands[@]}"; do
    result_args+=(--command "$c")
done
"$BIN"/twitchy-perf results "${result_args[@]}"

if [ "${#failed[@]}" -gt 0 ]; then
    echo "failed: ${failed[*]}" >&2
    exit 1
fi
