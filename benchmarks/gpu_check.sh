#!/usr/bin/env bash
# The one prepared script for a GPU machine (DESIGN.md): build the extension in place,
# run the CUDA and Triton tests, run the quick benchmarks, and write logs, CSV and plots
# into the folder given as the first argument. Needs no network: only torch, triton,
# pytest, ninja and matplotlib, which the GPU image has. Budget: under 8 minutes.
#
#   bash benchmarks/gpu_check.sh OUT_DIR
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: benchmarks/gpu_check.sh OUT_DIR}
mkdir -p "$OUT/results"
PY=${PYTHON:-python3}
export PYKERNELS_CUDA=1 MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
t0=$(date +%s)
stamp() { echo "[gpu_check +$(( $(date +%s) - t0 ))s] $*" | tee -a "$OUT/summary.txt"; }

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > "$OUT/summary.txt" 2>&1
stamp "build"
if ! $PY setup.py build_ext --inplace > "$OUT/build.log" 2>&1; then
  tail -40 "$OUT/build.log"; stamp "BUILD FAILED"; exit 1
fi
$PY -m pykernels info 2>&1 | tee -a "$OUT/summary.txt"

stamp "tests (CUDA and Triton on the GPU)"
timeout 240 $PY -m pytest -q -x tests -m "not slow" -p no:cacheprovider > "$OUT/tests.log" 2>&1
tests_rc=$?
tail -5 "$OUT/tests.log" | tee -a "$OUT/summary.txt"

stamp "quick benchmarks"
timeout 200 $PY -m pykernels bench --quick --device cuda --out "$OUT/results" > "$OUT/bench.log" 2>&1
bench_rc=$?
grep -E "^(MET|MISS)|ceilings" "$OUT/bench.log" | tee -a "$OUT/summary.txt"

# At most 8 files come back from the machine: pack the CSVs and plots.
tar czf "$OUT/results.tgz" -C "$OUT" results && rm -rf "$OUT/results"
stamp "done: tests rc=$tests_rc bench rc=$bench_rc"
exit $(( tests_rc != 0 || bench_rc != 0 ))
