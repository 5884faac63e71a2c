// Argument checks of the cosine family, shared by the CPU and CUDA implementations.
#pragma once
#include <string>

#include "common/checks.h"

namespace pykernels {

// x1, x2: same shape [..., D], same float dtype, same device of the given type.
inline void check_rowwise_pair(const char* op, const char* n1, const at::Tensor& x1,
                               const char* n2, const at::Tensor& x2, at::DeviceType dev) {
  check_float(op, n1, x1);
  check_device_type(op, n1, x1, dev);
  check_same_device(op, n2, x2, n1, x1);
  check_same_dtype(op, n2, x2, n1, x1);
  check_min_dim(op, n1, x1, 1);
  check_same_shape(op, n2, x2, n1, x1);
}

// grad of a row-wise op: shape [...] (x's shape without the last dim).
inline void check_row_grad(const char* op, const at::Tensor& grad, const at::Tensor& x) {
  check_float(op, "grad", grad);
  check_same_device(op, "grad", grad, "x1", x);
  TORCH_CHECK_VALUE(grad.sizes() == x.sizes().slice(0, x.dim() - 1), op,
                    ": argument 'grad' must have shape ", x.sizes().slice(0, x.dim() - 1),
                    ", got ", grad.sizes());
}

// 0 for "mse", 1 for "cosine".
inline int feature_kind(const char* op, c10::string_view kind) {
  if (kind == "mse") return 0;
  if (kind == "cosine") return 1;
  TORCH_CHECK_VALUE(false, op, ": argument 'kind' must be \"mse\" or \"cosine\", got \"",
                    std::string(kind), "\"");
  return -1;
}

// a [B, N, D], b [B, M, D].
inline void check_pairwise(const char* op, const at::Tensor& a, const at::Tensor& b,
                           at::DeviceType dev) {
  check_float(op, "a", a);
  check_device_type(op, "a", a, dev);
  check_same_device(op, "b", b, "a", a);
  check_same_dtype(op, "b", b, "a", a);
  check_dim(op, "a", a, 3);
  check_dim(op, "b", b, 3);
  TORCH_CHECK_VALUE(a.size(0) == b.size(0) && a.size(2) == b.size(2), op,
                    ": arguments 'a' [B, N, D] and 'b' [B, M, D] must agree in B and D, got ",
                    a.sizes(), " and ", b.sizes());
}

// grad of pairwise_cosine_similarity: [B, N, M] for a [B, N, D], b [B, M, D]. A grad of another
// shape would broadcast in the backward's matmuls (a wrong result) or fail inside them.
inline void check_pairwise_grad(const char* op, const at::Tensor& grad, const at::Tensor& a,
                                const at::Tensor& b) {
  check_float(op, "grad", grad);
  check_same_device(op, "grad", grad, "a", a);
  TORCH_CHECK_VALUE(grad.dim() == 3 && grad.size(0) == a.size(0) && grad.size(1) == a.size(1) &&
                        grad.size(2) == b.size(1),
                    op, ": argument 'grad' must have shape [", a.size(0), ", ", a.size(1), ", ",
                    b.size(1), "], got ", grad.sizes());
}

}  // namespace pykernels
