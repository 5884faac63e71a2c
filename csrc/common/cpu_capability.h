// Which CPU instruction sets the CPU kernels were built for, and which one runs.
//
// setup.py compiles for baseline x86-64 (a wheel built here runs on any x86-64), where
// at::vec falls back to scalar loops (exp per element: ~10x slower). Exp-bound kernels
// therefore also get an AVX2 + FMA build of the same source (a <family>_avx2.cpp file that
// wraps its kernels in common/cpu_avx2_begin.h / cpu_avx2_end.h), and the op picks one at
// run time, as ATen does for its own CPU kernels.
#pragma once
#include <cstdlib>
#include <cstring>

// GCC on x86-64 can compile one file's functions for AVX2 with a target pragma.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(CPU_CAPABILITY)
#define PK_HAVE_AVX2_BUILD 1
#endif

namespace pykernels {
namespace cpu {

// True when the AVX2 + FMA build should run: the CPU has AVX2, FMA and F16C, and the
// environment does not ask for the baseline build (PYKERNELS_CPU_CAPABILITY=default, which
// the tests use to run the baseline kernels on any machine). Read once.
inline bool use_avx2() {
#ifdef PK_HAVE_AVX2_BUILD
  static const bool yes = [] {
    const char* env = std::getenv("PYKERNELS_CPU_CAPABILITY");
    if (env != nullptr && std::strcmp(env, "default") == 0) return false;
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("f16c");
  }();
  return yes;
#else
  return false;
#endif
}

// "avx2" or "default": what use_avx2() chose (reported by `python -m pykernels info`).
inline const char* cpu_capability() { return use_avx2() ? "avx2" : "default"; }

}  // namespace cpu
}  // namespace pykernels
