// Argument checks of the MAE family, shared by the CPU and CUDA implementations.
#pragma once
#include "common/checks.h"

namespace pykernels {

// ids [N, K] int64 on ref's device, N = ref.size(0).
inline void check_ids(const char* op, const char* arg, const at::Tensor& ids, const char* ref_arg,
                      const at::Tensor& ref) {
  TORCH_CHECK_TYPE(ids.scalar_type() == at::kLong, op, ": argument '", arg,
                   "' must be an int64 tensor, got ", ids.scalar_type());
  check_same_device(op, arg, ids, ref_arg, ref);
  check_dim(op, arg, ids, 2);
  TORCH_CHECK_VALUE(ids.size(0) == ref.size(0), op, ": argument '", arg, "' must have ",
                    ref.size(0), " rows (the batch of '", ref_arg, "'), got shape ", ids.sizes());
}

// A float tensor of the given rank on a device of type dev.
inline void check_float_tensor(const char* op, const char* arg, const at::Tensor& t, int64_t dim,
                               at::DeviceType dev) {
  check_float(op, arg, t);
  check_device_type(op, arg, t, dev);
  check_dim(op, arg, t, dim);
}

// Patch geometry of a [N, C, H, W] image: p > 0 divides H and W.
inline void check_patches(const char* op, int64_t p, int64_t H, int64_t W) {
  TORCH_CHECK_VALUE(p > 0, op, ": argument 'patch_size' must be > 0, got ", p);
  TORCH_CHECK_VALUE(H % p == 0 && W % p == 0, op, ": image height and width must be multiples of ",
                    "'patch_size' (", p, "), got ", H, " x ", W);
}

// x [N, L, D] tokens and grad of gather_tokens [N, K, D].
inline void check_count(const char* op, const char* arg, int64_t v) {
  TORCH_CHECK_VALUE(v >= 0, op, ": argument '", arg, "' must be >= 0, got ", v);
}

// pred [N, L, p*p*C] against imgs [N, C, H, W].
inline void check_pred_imgs(const char* op, const at::Tensor& pred, const at::Tensor& imgs,
                            int64_t p, at::DeviceType dev) {
  check_float_tensor(op, "imgs", imgs, 4, dev);
  check_float_tensor(op, "pred", pred, 3, dev);
  check_same_device(op, "pred", pred, "imgs", imgs);
  check_same_dtype(op, "imgs", imgs, "pred", pred);
  check_patches(op, p, imgs.size(2), imgs.size(3));
  const int64_t L = (imgs.size(2) / p) * (imgs.size(3) / p), P = p * p * imgs.size(1);
  TORCH_CHECK_VALUE(pred.size(0) == imgs.size(0) && pred.size(1) == L && pred.size(2) == P, op,
                    ": argument 'pred' must have shape [", imgs.size(0), ", ", L, ", ", P,
                    "] (N, patches, p*p*C of 'imgs'), got ", pred.sizes());
}

}  // namespace pykernels
