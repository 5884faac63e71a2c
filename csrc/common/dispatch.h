// dtype dispatch and the accumulation type: every kernel accumulates in float32
// (float64 for float64 inputs), whatever it reads and writes.
#pragma once
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

// The four dtypes every op accepts: float32, float64, float16, bfloat16.
#define PK_DISPATCH_FLOATING(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

namespace pykernels {
template <typename scalar_t>
using acc_t = at::opmath_type<scalar_t>;
}  // namespace pykernels
