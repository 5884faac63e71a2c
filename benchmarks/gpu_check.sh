#!/usr/bin/env bash
# The one prepared script for a GPU machine (DESIGN.md): build the extension in place,
# run the CUDA and Triton tests, run the quick benchmarks, capture every op in a CUDA graph,
# run compute-sanitizer (memcheck, racecheck) and the huge-tensor (> 2^31 elements) tests,
# and write logs, CSV and plots into the folder given as the first argument. Needs no
# network: only torch, triton, pytest, ninja and matplotlib, which the GPU image has.
# Budget: under 8 minutes.
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
# Only the cuda and triton parametrisations: the CPU ones run in CI, and the whole suite
# no longer fits this step's budget.
# pytest-xdist (on the GPU image) spreads the Triton JIT compiles over the host's cores.
XDIST=$($PY -c "import xdist" 2>/dev/null && echo "-n ${GPU_CHECK_WORKERS:-8}")
timeout ${GPU_CHECK_TEST_S:-240} $PY -m pytest -q tests -m "not slow" -k "cuda or triton" -p no:cacheprovider $XDIST -rf > "$OUT/tests.log" 2>&1
tests_rc=$?
grep -E "^(FAILED|ERROR)" "$OUT/tests.log" | cut -c1-200 | head -40 | tee -a "$OUT/summary.txt"
tail -2 "$OUT/tests.log" | tee -a "$OUT/summary.txt"

bench_rc=0
if [[ ${GPU_CHECK_BENCH_S:-200} -gt 0 ]]; then
stamp "quick benchmarks"
timeout ${GPU_CHECK_BENCH_S:-200} $PY -m pykernels bench --quick --device cuda --out "$OUT/results" > "$OUT/bench.log" 2>&1
bench_rc=$?
fi
[[ -f "$OUT/bench.log" ]] && grep -E "^(MET|MISS)|ceilings" "$OUT/bench.log" | tee -a "$OUT/summary.txt"

# The hardening checks (issue 8). Each gets what is left of the 8 minutes, up to its cap,
# and reports SKIPPED (budget) rather than overrun it.
left() { local cap=$1 rest=$(( ${GPU_CHECK_BUDGET_S:-470} - ($(date +%s) - t0) )); echo $(( rest < cap ? rest : cap )); }
run_step() {  # name cap log command...
  local name=$1 cap; cap=$(left "$2"); local log=$3; shift 3
  if (( cap < 20 )); then stamp "$name: SKIPPED (budget)"; return 0; fi
  stamp "$name (up to ${cap}s)"
  timeout "$cap" "$@" > "$HLOG/$log" 2>&1
}
HLOG=$OUT/hardening; mkdir -p "$HLOG"  # packed into hardening.tgz at the end

# (a) every cuda / triton op captured in a CUDA graph and replayed, a 50-step DDIM loop
run_step "CUDA graphs" 60 graphs.log $PY benchmarks/gpu_graphs.py
graphs_rc=$?
grep -E "^GRAPH FAIL|^graphs:" "$HLOG/graphs.log" | tee -a "$OUT/summary.txt"

# (b) compute-sanitizer over every CUDA kernel at tiny sizes; one allocation per tensor
SAN=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
san_rc=0
for tool in ${GPU_CHECK_SANITIZERS:-memcheck racecheck}; do
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 run_step "compute-sanitizer $tool" 75 "sanitizer_$tool.log" \
    "$SAN" --tool "$tool" --error-exitcode 3 $PY benchmarks/gpu_sanitize.py
  rc=$?
  summary=$(grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$HLOG/sanitizer_$tool.log" | tail -1)
  if [[ $rc -eq 0 ]] && grep -q "sanitize run done" "$HLOG/sanitizer_$tool.log"; then
    stamp "$tool: clean ${summary}"
  elif [[ -s "$HLOG/sanitizer_$tool.log" ]]; then
    san_rc=1; stamp "$tool: rc=$rc ${summary}"
    grep -E "^=+ +(Invalid|Error|Race|.*hazard)" "$HLOG/sanitizer_$tool.log" | sort | uniq -c | head -10 | tee -a "$OUT/summary.txt"
  fi
done

# (c) more than 2^31 elements through the element-wise and gather ops on cuda and triton
run_step "huge tensors (> 2^31 elements)" 90 huge.log $PY -m pytest -q tests/test_huge.py -k "cuda or triton" -p no:cacheprovider
huge_rc=$?
tail -3 "$HLOG/huge.log" | tee -a "$OUT/summary.txt"

# At most 8 files come back from the machine: pack the CSVs and plots.
tar czf "$OUT/results.tgz" -C "$OUT" results && rm -rf "$OUT/results"
tar czf "$OUT/hardening.tgz" -C "$OUT" hardening && rm -rf "$HLOG"
stamp "done: tests rc=$tests_rc bench rc=$bench_rc graphs rc=$graphs_rc sanitizer rc=$san_rc huge rc=$huge_rc"
exit $(( tests_rc != 0 || bench_rc != 0 || graphs_rc != 0 || san_rc != 0 || huge_rc != 0 ))
