#!/usr/bin/env bash
# CUDA correctness + speed check, for a lent GPU machine (one call, < 8 minutes):
#   greedy tokens on CUDA == CPU for random:llama3.2-1b (and the default model when its GGUF is
#   there), then random:llama3.1-8b bf16 decode tok/s against the HBM bound.
# The GPU image has torch/transformers/tiktoken but not gguf or llama-models: carry their wheels
# in .whl (see BENCHMARKS.md, "GPU check") and this script installs them into /tmp/site.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
exec timeout 470 "$PY" benchmarks/gpu_check.py "$@"
