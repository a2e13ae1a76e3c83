#!/usr/bin/env bash
# The benchmarks that name a device, on the GPU, from one short script (issue 17's GPU round):
#
#   bash benchmarks/gpu.sh [RESULTS_DIR]          (or: make bench-gpu)
#
# extract (pooled activations beside the bare forward), peer (the user's path beside
# TransformerLens, whose rows are skipped when it is not installed), ablation (batched
# beside one forward per set) and run_ablation (the ablation stage of `neurolens run`
# beside its floor), one repetition each (NEUROLENS_BENCH_REPS), each under a limit of
# TIMEOUT seconds (150): at most 10 minutes in all. Results go to RESULTS_DIR
# (benchmarks/results/gpu) with the GPU's name in each. PYTHON picks the interpreter
# (.venv/bin/python, else python3). Without a CUDA device it says so and exits 2.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
OUT=${1:-benchmarks/results/gpu}
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "benchmarks/gpu.sh: no CUDA device visible to $PY; run it on a machine with a GPU" >&2
    exit 2
fi
export NEUROLENS_BENCH_REPS=${NEUROLENS_BENCH_REPS:-1} PYTHONUNBUFFERED=1
exec "$PY" -m benchmarks --only extract,peer,ablation,run_ablation --results "$OUT" \
    --timeout "${TIMEOUT:-150}"
