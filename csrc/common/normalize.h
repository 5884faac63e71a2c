// Row normalisation y = x / max(|x|, eps) over the last dim and its gradient, with the
// cosine family's eps rule. Defined in cpu/cosine.cpp and cuda/cosine.cu; the contrastive
// family uses them for normalize=True.
#pragma once
#include <ATen/ATen.h>

namespace pykernels {
namespace cpu {
// Rows of x divided by max(|row|, eps), in x's dtype.
at::Tensor normalize_rows(const at::Tensor& x, double eps);
// 1 / max(|row|, eps) per row of x, in the accumulation dtype.
at::Tensor row_inverse_norms(const at::Tensor& x, double eps);
// Gradient of normalize_rows at x given the output gradient gy (both x's shape):
//   gx = (gy - [n > eps] y (y . gy)) / max(n, eps),  y = x / n.
at::Tensor normalize_rows_backward(const at::Tensor& gy, const at::Tensor& x, double eps);
// The same in place on g (x's shape and dtype, contiguous). prescaled: g is gy already
// divided by max(n, eps), and becomes g - [n > eps] y (y . g).
void normalize_rows_backward_(at::Tensor& g, const at::Tensor& x, double eps, bool prescaled);
}  // namespace cpu
namespace cuda {
at::Tensor normalize_rows(const at::Tensor& x, double eps);
at::Tensor normalize_rows_backward(const at::Tensor& gy, const at::Tensor& x, double eps);
}  // namespace cuda
}  // namespace pykernels
