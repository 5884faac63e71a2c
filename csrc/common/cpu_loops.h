// Plain loops that the compiler vectorises, built twice: for baseline x86-64 (4 floats per
// SSE2 vector, what setup.py targets) and for AVX2 + FMA (8 per vector), picked at run time
// by common/cpu_capability.h. Memory-bound element-wise kernels need no hand-written
// at::vec code for this (at::vec is scalar in the baseline build); the loop body is an
// always-inline lambda that the compiler inlines into both twins and vectorises for each
// instruction set. The AVX2 twin's name contains "avx2" (tests/test_cpu_build.py).
#pragma once
#include <cstdint>

#include "common/cpu_capability.h"

// A lambda or helper that must be inlined into the twin that calls it, so that it is
// vectorised for that twin's instruction set.
#define PK_CPU_INLINE __attribute__((always_inline)) inline

namespace pykernels {
namespace cpu {

template <typename F>
__attribute__((noinline)) void run_vectorised_default(F& body) {
  body();
}

#ifdef PK_HAVE_AVX2_BUILD
template <typename F>
__attribute__((noinline, target("avx2,fma"))) void run_vectorised_avx2(F& body) {
  body();
}
#endif

// body(): a lambda declared `[&]() __attribute__((always_inline)) { ... }` holding the
// loops, run as compiled for the best instruction set this CPU has.
template <typename F>
inline void run_vectorised(F&& body) {
#ifdef PK_HAVE_AVX2_BUILD
  if (use_avx2()) return run_vectorised_avx2(body);
#endif
  run_vectorised_default(body);
}

// sum_i f(i) over [0, len) in kLanes interleaved partial sums added in a fixed order: the
// compiler vectorises it (one running float sum would stay scalar without -ffast-math),
// and the result does not depend on the thread count.
template <typename acc, typename F>
PK_CPU_INLINE acc lane_sum(int64_t len, F&& f) {
  constexpr int kLanes = 16;
  acc part[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= len; i += kLanes)
    for (int j = 0; j < kLanes; ++j) part[j] += f(i + j);
  acc sum = 0;
  for (; i < len; ++i) sum += f(i);
  for (int j = 0; j < kLanes; ++j) sum += part[j];
  return sum;
}

}  // namespace cpu
}  // namespace pykernels
