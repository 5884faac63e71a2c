// Input checks shared by every op. Each message names the op, the argument, what was
// expected and what came, so a direct torch.ops.pykernels.* call fails as clearly as
// the Python API does. TORCH_CHECK_* map to Python exception types:
//   _TYPE -> TypeError, _VALUE -> ValueError, _INDEX -> IndexError, plain -> RuntimeError.
#pragma once
#include <ATen/ATen.h>

namespace pykernels {

inline bool is_float_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

inline void check_float(const char* op, const char* arg, const at::Tensor& t) {
  TORCH_CHECK_TYPE(is_float_dtype(t.scalar_type()), op, ": argument '", arg,
                   "' must be float32, float64, float16 or bfloat16, got ", t.scalar_type());
}

inline void check_same_dtype(const char* op, const char* arg, const at::Tensor& t,
                             const char* ref_arg, const at::Tensor& ref) {
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), op, ": argument '", arg,
                   "' must have the same dtype as '", ref_arg, "' (", ref.scalar_type(), "), got ",
                   t.scalar_type());
}

inline void check_same_device(const char* op, const char* arg, const at::Tensor& t,
                              const char* ref_arg, const at::Tensor& ref) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), op, ": argument '", arg,
                    "' must be on the same device as '", ref_arg, "' (", ref.device(), "), got ",
                    t.device());
}

inline void check_device_type(const char* op, const char* arg, const at::Tensor& t,
                              at::DeviceType want) {
  TORCH_CHECK_VALUE(t.device().type() == want, op, ": argument '", arg, "' must be a ",
                    c10::DeviceTypeName(want, /*lower_case=*/true), " tensor, got ", t.device());
}

// x1 a float tensor on a device of type dev; x2 of x1's dtype, on x1's device.
inline void check_float_pair(const char* op, const char* n1, const at::Tensor& x1, const char* n2,
                             const at::Tensor& x2, at::DeviceType dev) {
  check_float(op, n1, x1);
  check_device_type(op, n1, x1, dev);
  check_same_device(op, n2, x2, n1, x1);
  check_same_dtype(op, n2, x2, n1, x1);
}

inline void check_min_dim(const char* op, const char* arg, const at::Tensor& t, int64_t min_dim) {
  TORCH_CHECK_VALUE(t.dim() >= min_dim, op, ": argument '", arg, "' must have at least ", min_dim,
                    " dimension(s), got shape ", t.sizes());
}

inline void check_dim(const char* op, const char* arg, const at::Tensor& t, int64_t dim) {
  TORCH_CHECK_VALUE(t.dim() == dim, op, ": argument '", arg, "' must have ", dim,
                    " dimension(s), got shape ", t.sizes());
}

inline void check_same_shape(const char* op, const char* arg, const at::Tensor& t,
                             const char* ref_arg, const at::Tensor& ref) {
  TORCH_CHECK_VALUE(t.sizes() == ref.sizes(), op, ": argument '", arg,
                    "' must have the same shape as '", ref_arg, "' (", ref.sizes(), "), got ",
                    t.sizes());
}

inline void check_positive(const char* op, const char* arg, double v) {
  TORCH_CHECK_VALUE(v > 0.0, op, ": argument '", arg, "' must be > 0, got ", v);
}

}  // namespace pykernels
