#!/usr/bin/env bash
# The CUDA check, one script (under 6 minutes on one H100): (a) the CUDA tests, (b) a smoke
# training run on the GPU (compiled nodes, bf16), (c-e) WRN-28-10-sized training throughput
# of NSA-id and the fixed WRN-28-10†, with either stage implementation, eager and compiled: images/s, projected time
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

# The stage runs as network.py's readable loop (NSA_STAGE=reference, the default on CUDA) or
# as fast_stage.py's gathers (NSA_STAGE=fast, the default on the CPU): which wins on a GPU has
# not been measured, and these rows decide it.
for run in "reference 0" "fast 0" "reference 1"; do
    set -- $run
    echo "== (c-e) WRN-28-10 throughput, NSA_STAGE=$1 NSA_COMPILE=$2 [${SECONDS}s]"
    NSA_STAGE=$1 NSA_COMPILE=$2 $PY -c "from nsa_core.bench import gpu_main; raise SystemExit(gpu_main('results/bench/gpu_$1_compile$2.csv'))"
done
if [ -n "${OUT:-}" ]; then cp results/bench/gpu_*_compile*.csv "$OUT"/; fi
echo "== gpu_check passed in ${SECONDS}s"
