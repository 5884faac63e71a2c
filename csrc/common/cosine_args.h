// Argument checks of the cosine family's ops, shared by the CPU and CUDA wrappers: each
// wrapper makes one call, which checks every argument of its op.
#pragma once
#include <array>
#include <string>

#include "common/checks.h"

namespace pykernels {

// What feature_distillation_loss computes per row.
enum class FeatureKind { kMse, kCosine };

namespace detail {

// x1, x2: the same shape [..., D], the same float dtype, on one device of type dev.
inline void check_row_pair(const char* op, const char* n1, const at::Tensor& x1, const char* n2,
                           const at::Tensor& x2, double eps, at::DeviceType dev) {
  check_float_pair(op, n1, x1, n2, x2, dev);
  check_min_dim(op, n1, x1, 1);
  check_same_shape(op, n2, x2, n1, x1);
  check_positive(op, "eps", eps);
}

// The upstream gradient of a row-wise op: x's shape without the last dim, any float dtype.
inline void check_row_grad(const char* op, const at::Tensor& grad, const char* n1,
                           const at::Tensor& x) {
  check_float(op, "grad", grad);
  check_same_device(op, "grad", grad, n1, x);
  TORCH_CHECK_VALUE(grad.sizes() == x.sizes().slice(0, x.dim() - 1), op,
                    ": argument 'grad' must have shape ", x.sizes().slice(0, x.dim() - 1), ", got ",
                    grad.sizes());
}

// a [B, N, D] and b [B, M, D]: one float dtype, one device of type dev.
inline void check_pairwise_inputs(const char* op, const at::Tensor& a, const at::Tensor& b,
                                  double eps, at::DeviceType dev) {
  check_float_pair(op, "a", a, "b", b, dev);
  check_dim(op, "a", a, 3);
  check_dim(op, "b", b, 3);
  TORCH_CHECK_VALUE(a.size(0) == b.size(0) && a.size(2) == b.size(2), op,
                    ": arguments 'a' [B, N, D] and 'b' [B, M, D] must agree in B and D, got ",
                    a.sizes(), " and ", b.sizes());
  check_positive(op, "eps", eps);
}

}  // namespace detail

inline void check_cosine_similarity(const char* op, const at::Tensor& x1, const at::Tensor& x2,
                                    double eps, at::DeviceType dev) {
  detail::check_row_pair(op, "x1", x1, "x2", x2, eps, dev);
}

inline void check_cosine_similarity_backward(const char* op, const at::Tensor& grad,
                                             const at::Tensor& x1, const at::Tensor& x2, double eps,
                                             at::DeviceType dev) {
  detail::check_row_pair(op, "x1", x1, "x2", x2, eps, dev);
  detail::check_row_grad(op, grad, "x1", x1);
}

// Checks the arguments of feature_distillation_loss and returns its kind.
inline FeatureKind check_feature_distillation_loss(const char* op, const at::Tensor& student,
                                                   const at::Tensor& teacher, c10::string_view kind,
                                                   double eps, at::DeviceType dev) {
  detail::check_row_pair(op, "student", student, "teacher", teacher, eps, dev);
  if (kind == "mse") return FeatureKind::kMse;
  TORCH_CHECK_VALUE(kind == "cosine", op, ": argument 'kind' must be \"mse\" or \"cosine\", got \"",
                    std::string(kind), "\"");
  return FeatureKind::kCosine;
}

inline FeatureKind check_feature_distillation_loss_backward(const char* op, const at::Tensor& grad,
                                                            const at::Tensor& student,
                                                            const at::Tensor& teacher,
                                                            c10::string_view kind, double eps,
                                                            at::DeviceType dev) {
  const FeatureKind k = check_feature_distillation_loss(op, student, teacher, kind, eps, dev);
  detail::check_row_grad(op, grad, "student", student);
  return k;
}

inline void check_pairwise_cosine_similarity(const char* op, const at::Tensor& a,
                                             const at::Tensor& b, double eps, at::DeviceType dev) {
  detail::check_pairwise_inputs(op, a, b, eps, dev);
}

// grad of pairwise_cosine_similarity: [B, N, M]. A grad of another shape would broadcast in
// the backward's matmuls (a wrong result) or fail inside them.
inline void check_pairwise_cosine_similarity_backward(const char* op, const at::Tensor& grad,
                                                      const at::Tensor& a, const at::Tensor& b,
                                                      double eps, at::DeviceType dev) {
  detail::check_pairwise_inputs(op, a, b, eps, dev);
  check_float(op, "grad", grad);
  check_same_device(op, "grad", grad, "a", a);
  TORCH_CHECK_VALUE(grad.dim() == 3 && grad.size(0) == a.size(0) && grad.size(1) == a.size(1) &&
                        grad.size(2) == b.size(1),
                    op, ": argument 'grad' must have shape [", a.size(0), ", ", a.size(1), ", ",
                    b.size(1), "], got ", grad.sizes());
}

// The gradients a backward returns: one per input, an empty tensor where output_mask is false.
using GradMask = std::array<bool, 2>;

}  // namespace pykernels
