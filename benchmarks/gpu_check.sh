#!/usr/bin/env bash
# The one prepared script for a GPU machine: build the extension in place, check that its
# error paths work, run the CUDA and Triton tests, the quick benchmarks, every op captured
# in a CUDA graph, compute-sanitizer (memcheck, racecheck) and the huge-tensor
# (> 2^31 elements) tests, writing logs, CSV and plots into OUT_DIR. Needs no network: only
# torch, triton, pytest (pytest-xdist if present), ninja and matplotlib.
#
#   bash benchmarks/gpu_check.sh OUT_DIR
#
# Every step after the build gets what is left of GPU_CHECK_BUDGET_S (default 470 s), up to
# its own cap, and reports SKIPPED (budget) rather than overrun it. Knobs:
#   GPU_CHECK_TESTS      test files to run (default: all of tests/)
#   GPU_CHECK_TEST_S     cap of the test step (240)        GPU_CHECK_BENCH_S   cap of the benchmark (120)
#   GPU_CHECK_BENCH_ARGS arguments of the benchmark (--quick; '' for the full GPU sizes and targets)
#   GPU_CHECK_STEPS      optional steps (default "graphs memcheck racecheck huge")
#   GPU_CHECK_WORKERS    pytest-xdist workers (8)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: benchmarks/gpu_check.sh OUT_DIR}
mkdir -p "$OUT/results"
PY=${PYTHON:-python3}
export PYKERNELS_CUDA=1 MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
BUDGET=${GPU_CHECK_BUDGET_S:-470}
STEPS=${GPU_CHECK_STEPS:-graphs memcheck racecheck huge}
t0=$(date +%s)
stamp() { echo "[gpu_check +$(( $(date +%s) - t0 ))s] $*" | tee -a "$OUT/summary.txt"; }
left() { local cap=$1 rest=$(( BUDGET - ($(date +%s) - t0) )); echo $(( rest < cap ? rest : cap )); }
rc_all=0

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > "$OUT/summary.txt" 2>&1

# ------------------------------------------------------------------------------ build
# The error path: a direct op call with bad arguments formats numbers, sizes and devices
# into its message. A toolchain that links a static libstdc++ into the extension crashes
# there (that copy's stream code meets the locale data of the libstdc++ torch loaded). So
# the build prefers the system compiler, then the default one with the static copy's
# symbols kept private, then the default one as it is; the first whose error path works wins.
smoke() {
  $PY - > "$OUT/smoke.log" 2>&1 <<'PYEOF'
import torch, pykernels  # noqa: F401
x = torch.ones(2, 3, device="cuda")
for call in (lambda: torch.ops.pykernels.cosine_similarity(x, x, 0.0),  # a double
             lambda: torch.ops.pykernels.cosine_similarity(x, x[:, :2], 1e-8),  # sizes
             lambda: torch.ops.pykernels.cosine_similarity(x, x.cpu(), 1e-8)):  # devices
    try:
        call()
    except ValueError as exc:
        print("error path ok:", str(exc)[:100])
    else:
        raise SystemExit("no error raised")
PYEOF
}
build() {  # label, then env assignments
  local label=$1; shift
  stamp "build ($label)"
  rm -rf build pykernels/_C*.so
  if ! env "$@" $PY setup.py build_ext --inplace >> "$OUT/build.log" 2>&1; then
    tail -30 "$OUT/build.log"; stamp "BUILD FAILED ($label)"; return 1
  fi
  smoke && return 0
  stamp "error path crashed (rc=$?) with the $label build"; tail -3 "$OUT/smoke.log"; return 1
}
echo "CC=${CC:-} CXX=${CXX:-} c++=$(command -v c++) g++=$(command -v g++)" >> "$OUT/summary.txt"
{ [[ -x /usr/bin/g++ ]] && build "system compiler /usr/bin/g++" CC=/usr/bin/gcc CXX=/usr/bin/g++; } \
  || build "static libstdc++ kept private" LDFLAGS="${LDFLAGS:-} -Wl,--exclude-libs,ALL" \
  || build default \
  || { stamp "no working build"; exit 1; }
$PY -m pykernels info 2>&1 | tee -a "$OUT/summary.txt"

# ------------------------------------------------------------------------------ tests
# Only the cuda and triton parametrisations: the CPU ones run in CI. pytest-xdist spreads the
# Triton JIT compiles over the host's cores.
stamp "tests (CUDA and Triton on the GPU)"
XDIST=$($PY -c "import xdist" 2>/dev/null && echo "-n ${GPU_CHECK_WORKERS:-8}")
timeout "$(left "${GPU_CHECK_TEST_S:-240}")" $PY -m pytest -q ${GPU_CHECK_TESTS:-tests} -m "not slow" \
  -k "cuda or triton" -p no:cacheprovider $XDIST -rfE > "$OUT/tests.log" 2>&1
tests_rc=$?; (( tests_rc )) && rc_all=1
grep -E "^(FAILED|ERROR)" "$OUT/tests.log" | cut -c1-200 | head -40 | tee -a "$OUT/summary.txt"
tail -1 "$OUT/tests.log" | tee -a "$OUT/summary.txt"; stamp "tests rc=$tests_rc"

# ------------------------------------------------------------------------------ benchmark
cap=$(left "${GPU_CHECK_BENCH_S:-120}")
if (( cap >= 30 )); then
  stamp "quick benchmarks (up to ${cap}s)"
  timeout "$cap" $PY -m pykernels bench ${GPU_CHECK_BENCH_ARGS:---quick} --device cuda --out "$OUT/results" \
    --markdown "$OUT/RESULTS_cuda.md" > "$OUT/bench.log" 2>&1
  bench_rc=$?; (( bench_rc )) && rc_all=1
  tail -70 "$OUT/bench.log"; stamp "bench rc=$bench_rc"
else
  stamp "quick benchmarks: SKIPPED (budget)"
fi

# ------------------------------------------------------------------------------ hardening
HLOG=$OUT/hardening; mkdir -p "$HLOG"  # packed into hardening.tgz at the end
run_step() {  # name cap log command...
  local name=$1 cap; cap=$(left "$2"); local log=$3; shift 3
  if (( cap < 20 )); then stamp "$name: SKIPPED (budget)"; return 0; fi
  stamp "$name (up to ${cap}s)"
  timeout "$cap" "$@" > "$HLOG/$log" 2>&1
}
SAN=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
for step in $STEPS; do
  case $step in
    graphs)  # every cuda / triton op captured in a CUDA graph and replayed, a 50-step DDIM loop
      run_step "CUDA graphs" 60 graphs.log $PY benchmarks/gpu_graphs.py || rc_all=1
      grep -E "^GRAPH FAIL|^graphs:" "$HLOG/graphs.log" | tee -a "$OUT/summary.txt" ;;
    memcheck|racecheck)  # every CUDA kernel at tiny sizes, one allocation per tensor
      PYTORCH_NO_CUDA_MEMORY_CACHING=1 run_step "compute-sanitizer $step" 75 "sanitizer_$step.log" \
        "$SAN" --tool "$step" --error-exitcode 3 $PY benchmarks/gpu_sanitize.py
      rc=$?; summary=$(grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$HLOG/sanitizer_$step.log" | tail -1)
      if [[ $rc -eq 0 ]] && grep -q "sanitize run done" "$HLOG/sanitizer_$step.log"; then
        stamp "$step: clean ${summary}"
      elif [[ -s "$HLOG/sanitizer_$step.log" ]]; then
        rc_all=1; stamp "$step: rc=$rc ${summary}"
      fi ;;
    huge)  # more than 2^31 elements through the element-wise and gather ops on cuda and triton
      run_step "huge tensors (> 2^31 elements)" 90 huge.log \
        $PY -m pytest -q tests/test_huge.py -k "cuda or triton" -p no:cacheprovider || rc_all=1
      tail -1 "$HLOG/huge.log" | tee -a "$OUT/summary.txt" ;;
  esac
done

# At most 8 files come back from the machine: pack the CSVs, plots and hardening logs.
tar czf "$OUT/results.tgz" -C "$OUT" results && rm -rf "$OUT/results"
tar czf "$OUT/hardening.tgz" -C "$OUT" hardening && rm -rf "$HLOG"
stamp "done: rc=$rc_all"
exit $rc_all
