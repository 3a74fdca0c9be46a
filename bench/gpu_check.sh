#!/usr/bin/env bash
# The CUDA check, one script (under 6 minutes on one H100): (a) the CUDA tests, (b) a smoke
# training run on the GPU (compiled nodes, bf16), (c, d) WRN-28-10-sized training throughput
# of NSA-id and the fixed WRN-28-10†, eager and with compiled nodes: images/s, projected time
# per CIFAR-10 epoch and per 300 epochs, peak GPU memory (results/bench/gpu_*.csv; also
# copied to $OUT when set). Run from anywhere: bash bench/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || make env
PY=.venv/bin/python
$PY -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: torch sees no CUDA device')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
SECONDS=0

echo "== (a) CUDA tests"
$PY -m pytest -q tests/test_cuda.py

echo "== (b) smoke training on CUDA [${SECONDS}s]"
$PY -m nsa_core train --kind nsa-id --space 3 --profile smoke --device cuda --models-dir "$tmp"

for c in 0 1; do
    echo "== (c, d) WRN-28-10 throughput, NSA_COMPILE=$c [${SECONDS}s]"
    NSA_COMPILE=$c $PY -c "from nsa_core.bench import gpu_main; raise SystemExit(gpu_main('results/bench/gpu_compile$c.csv'))"
done
if [ -n "${OUT:-}" ]; then cp results/bench/gpu_compile*.csv "$OUT"/; fi
echo "== gpu_check passed in ${SECONDS}s"
