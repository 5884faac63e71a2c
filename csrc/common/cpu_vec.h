// Load and store at::vec vectors in the accumulation type from any input dtype, so a
// CPU kernel is written once for float32, float64, float16 and bfloat16. Half types
// are widened to float on load and rounded once on store.
#pragma once
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <algorithm>

#include "common/dispatch.h"

namespace pykernels {
namespace cpu {
// One namespace per CPU capability, as at::vec does: a file compiled for AVX2
// (common/cpu_avx2_begin.h) gets its own VecIO, so no inline function here exists twice
// under one name with two instruction sets.
inline namespace CPU_CAPABILITY {

template <typename scalar_t>
struct VecIO {
  using acc = acc_t<scalar_t>;
  using Vec = at::vec::Vectorized<acc>;
  static constexpr int64_t kWidth = Vec::size();

  // kWidth elements from p.
  static Vec load(const scalar_t* p) {
    if constexpr (std::is_same_v<scalar_t, acc>) {
      return Vec::loadu(p);
    } else {
      Vec out;
      at::vec::load_to_float<scalar_t>(p, out);
      return out;
    }
  }
  // n < kWidth elements from p, the rest zero.
  static Vec load(const scalar_t* p, int64_t n) {
    if constexpr (std::is_same_v<scalar_t, acc>) {
      return Vec::loadu(p, n);
    } else {
      acc buf[kWidth] = {};
      for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<acc>(p[i]);
      return Vec::loadu(buf);
    }
  }
  static void store(scalar_t* p, const Vec& v, int64_t n = kWidth) {
    if constexpr (std::is_same_v<scalar_t, acc>) {
      v.store(p, n);
    } else {
      acc buf[kWidth];
      v.store(buf);
      for (int64_t i = 0; i < n; ++i) p[i] = static_cast<scalar_t>(buf[i]);
    }
  }
};

// Rows per at::parallel_for task so each task touches at least ~32K elements.
inline int64_t row_grain(int64_t row_len) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(row_len, 1));
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace pykernels
