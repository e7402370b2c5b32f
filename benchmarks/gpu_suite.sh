#!/usr/bin/env bash
# Run benchmarks/gpu_suite.py where there is no network (the lent GPU machine): install the carried wheels
# (.whl/*.whl: ott-jax and its dependencies missing from that image) into a temporary target folder, then run
# jzad from this checkout with PYTHONPATH. Every argument goes to the suite (python -m benchmarks.gpu_suite).
set -euo pipefail
cd "$(dirname "$0")/.."
site="$(mktemp -d)"
trap 'rm -rf "$site"' EXIT
shopt -s nullglob
wheels=(.whl/*.whl)
if (( ${#wheels[@]} )); then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "${wheels[@]}"
fi
export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
python3 -c 'import ott, jax; print("[gpu_suite.sh] ott", ott.__version__, "| jax", jax.__version__)' \
    || echo "[gpu_suite.sh] ott-jax does not import (see benchmarks/README.md): parts that use it will fail"
python3 -m benchmarks.gpu_suite "$@"
