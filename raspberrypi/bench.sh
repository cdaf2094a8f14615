#!/usr/bin/env bash
# Benchmark this bundle's model with the same runner the edgeship harness uses (python -m edgeship_runtime.bench);
# prints its JSON result (runtime, load_ms, latency_ms {mean, p50, p90, p99, ...}, peak_rss_mb, ...).
#
#   ./bench.sh                          # the default model (as classify.sh picks it), 100 runs, 10 warm-up
#   ./bench.sh onnx --runs 200 --threads 4
#   ./bench.sh tflite/model.int8.tflite --warmup 20 > result.json
#
# The first argument, when it does not start with '-', picks the artifact (format, file name or path); the rest go
# to the runner unchanged. Run ./install.sh once first.
set -euo pipefail
DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${EDGESHIP_PI_VENV:-$DIR/.venv}"
[[ -x "$VENV/bin/python" ]] || { echo "bench.sh: no $VENV yet: run ./install.sh first" >&2; exit 2; }
PY="$VENV/bin/python"
export PYTHONPATH="$DIR${PYTHONPATH:+:$PYTHONPATH}"

want=()
if [[ $# -gt 0 && "$1" != -* ]]; then want=(--model "$1"); shift; fi
model="$("$PY" "$DIR/classify.py" --bundle "$DIR" "${want[@]+"${want[@]}"}" --print-model)" || exit 2

args=("$@")
has() { local a; for a in "${args[@]+"${args[@]}"}"; do [[ "$a" == "$1" || "$a" == "$1="* ]] && return 0; done; return 1; }
has --runs || args+=(--runs 100)
has --warmup || args+=(--warmup 10)
has --manifest || args+=(--manifest "$DIR/manifest.json")
exec "$PY" -m edgeship_runtime.bench "$DIR/$model" "${args[@]}"
