# Shared by perf/run-all.sh and perf/flamegraph.sh: start servers by pid,
# wait for their ready line, stop them by pid. Source it; do not run it.

# start_server NAME COMMAND...
# Starts COMMAND with stdout in $OUT_DIR/NAME.stdout and stderr in
# $OUT_DIR/NAME.log, waits for its "ready" line and sets NAME_PID,
# NAME_HTTP (host:port), NAME_IRC (host:port) and NAME_TARGET (a
# twitchy-perf --target spec). READY_WAIT_S (30) bounds the wait.
start_server() {
    local name=$1
    shift
    local stdout="$OUT_DIR/$name.stdout" log="$OUT_DIR/$name.log"
    : >"$stdout"
    : >"$log"
    "$@" >"$stdout" 2>"$log" &
    local pid=$!
    STARTED_PIDS+=("$pid")
    local ready=""
    for _ in $(seq 1 $((${READY_WAIT_S:-30} * 10))); do
        ready=$(grep -m1 ' ready http=' "$stdout" || true)
        [ -n "$ready" ] && break
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "$name exited before it was ready; its log:" >&2
            tail -20 "$log" >&2
            return 1
        fi
        sleep 0.1
    done
    if [ -z "$ready" ]; then
        echo "$name was not ready within ${READY_WAIT_S:-30} s; its log:" >&2
        tail -20 "$log" >&2
        return 1
    fi
    local http irc
    http=$(sed -E 's|.* http=http://([^/ ]+)/.*|\1|' <<<"$ready")
    irc=$(sed -E 's|.* irc=([^ ]+).*|\1|' <<<"$ready")
    printf -v "${name}_PID" '%s' "$pid"
    printf -v "${name}_HTTP" '%s' "$http"
    printf -v "${name}_IRC" '%s' "$irc"
    printf -v "${name}_TARGET" '%s' "$name=$http,irc=$irc,pid=$pid,log=$log"
    echo "$name ready (pid $pid): http=$http irc=$irc" >&2
}

# Stops every server this script started, by pid: SIGTERM, then SIGKILL.
stop_servers() {
    local pid
    for pid in "${STARTED_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${STARTED_PIDS[@]}"; do
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    STARTED_PIDS=()
}

STARTED_PIDS=()

# Where cargo puts the release binaries (CARGO_TARGET_DIR, when set, as cargo itself reads it).
TARGET_DIR=${CARGO_TARGET_DIR:-target}
BIN=$TARGET_DIR/release

# Rate limits high enough that load runs measure the server, not its
# per-user limit (20 messages / 30 s by default).
LOAD_RATE_LIMIT_ARGS=(--rate-limit-messages 1000000 --rate-limit-window-ms 1000)

# Rooms the engine serves during load runs: its three built-in rooms first
# (the seed's scenarios use them), then enough for the many-rooms scenario,
# whose load generator takes the listed rooms before inventing names.
PERF_ROOMS=200

# write_rooms_file PATH: the rooms file (TOML) for load runs.
write_rooms_file() {
    local styles=(brainrot pirate shakespeare) i
    {
        printf '[[rooms]]\nname = "lobby"\nstyle = "brainrot"\n\n'
        printf '[[rooms]]\nname = "tavern"\nstyle = "pirate"\n\n'
        printf '[[rooms]]\nname = "globe"\nstyle = "shakespeare"\n\n'
        for i in $(seq 3 $((PERF_ROOMS - 1))); do
            printf '[[rooms]]\nname = "perf_room_%d"\nstyle = "%s"\n\n' "$i" "${styles[$((i % 3))]}"
        done
    } >"$1"
}

# twitchy_args DATA_DIR: the engine's flags for load runs, with the stall
# detector on when this build has the flag. Writes the rooms file into
# DATA_DIR's parent folder.
twitchy_args() {
    local rooms_file="$1.rooms.toml"
    write_rooms_file "$rooms_file"
    local args=(--http 127.0.0.1:0 --irc 127.0.0.1:0 --data-dir "$1" --shards "${TWITCHY_SHARDS:-2}"
        --config "$rooms_file" "${LOAD_RATE_LIMIT_ARGS[@]}" --limits-exempt-loopback)
    if "$BIN/twitchy" --help 2>/dev/null | grep -q -- '--detect-stalls-ms'; then
        args+=(--detect-stalls-ms "${TWITCHY_DETECT_STALLS_MS:-10}")
    fi
    printf '%s\n' "${args[@]}"
}
