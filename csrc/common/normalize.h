// Row normalisation y = x / max(|x|, eps) over the last dim and its gradient, with the
// cosine family's eps rule. Defined in cpu/cosine.cpp and cuda/cosine.cu; shared with
// the contrastive family (normalize=True).
#pragma once
#include <ATen/ATen.h>

namespace pykernels {
namespace cpu {
// Rows of x divided by max(|row|, eps), in x's dtype; x contiguous.
at::Tensor normalize_rows(const at::Tensor& x, double eps);
// Gradient of normalize_rows given the output gradient gy (x, gy contiguous, x's dtype).
at::Tensor normalize_rows_backward(const at::Tensor& gy, const at::Tensor& x, double eps);
}  // namespace cpu
namespace cuda {
at::Tensor normalize_rows(const at::Tensor& x, double eps);
at::Tensor normalize_rows_backward(const at::Tensor& gy, const at::Tensor& x, double eps);
}  // namespace cuda
}  // namespace pykernels
