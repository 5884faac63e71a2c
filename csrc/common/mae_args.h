// Argument checks of the MAE family's ops, one function per op, shared by the CPU and
// CUDA wrappers (dev: the device type the wrapper runs on). Id values are checked on the
// CPU only (check_ids_values in cpu/mae.cpp): on CUDA that would read device memory.
#pragma once
#include "common/checks.h"

namespace pykernels {
namespace mae {

// MAE's L_keep = int(L * (1 - mask_ratio)), in double as Python computes it.
inline int64_t num_keep(int64_t L, double mask_ratio) {
  return static_cast<int64_t>(static_cast<double>(L) * (1.0 - mask_ratio));
}

// A float tensor of the given rank on a device of type dev.
inline void check_float_tensor(const char* op, const char* arg, const at::Tensor& t, int64_t dim,
                               at::DeviceType dev) {
  check_float(op, arg, t);
  check_device_type(op, arg, t, dev);
  check_dim(op, arg, t, dim);
}

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

inline void check_count(const char* op, const char* arg, int64_t v) {
  TORCH_CHECK_VALUE(v >= 0, op, ": argument '", arg, "' must be >= 0, got ", v);
}

// Patch geometry of a [N, C, H, W] image: p > 0 divides H and W.
inline void check_patches(const char* op, int64_t p, int64_t H, int64_t W) {
  TORCH_CHECK_VALUE(p > 0, op, ": argument 'patch_size' must be > 0, got ", p);
  TORCH_CHECK_VALUE(H % p == 0 && W % p == 0, op, ": image height and width must be multiples of ",
                    "'patch_size' (", p, "), got ", H, " x ", W);
}

// ------------------------------------------------------------------ per-op checks
// x [N, L, D]; noise [N, L], any float dtype; 0 <= mask_ratio < 1.
inline void check_random_masking(const char* op, const at::Tensor& x, const at::Tensor& noise,
                                 double mask_ratio, at::DeviceType dev) {
  check_float_tensor(op, "x", x, 3, dev);
  check_float(op, "noise", noise);
  check_same_device(op, "noise", noise, "x", x);
  TORCH_CHECK_VALUE(noise.dim() == 2 && noise.size(0) == x.size(0) && noise.size(1) == x.size(1),
                    op, ": argument 'noise' must have shape [", x.size(0), ", ", x.size(1),
                    "], got ", noise.sizes());
  TORCH_CHECK_VALUE(mask_ratio >= 0 && mask_ratio < 1, op,
                    ": argument 'mask_ratio' must be in [0, 1), got ", mask_ratio);
}

// grad [N, K, D] of x_visible; ids_restore [N, L], K <= L.
inline void check_random_masking_backward(const char* op, const at::Tensor& grad,
                                          const at::Tensor& ids_restore, at::DeviceType dev) {
  check_float_tensor(op, "grad", grad, 3, dev);
  check_ids(op, "ids_restore", ids_restore, "grad", grad);
  TORCH_CHECK_VALUE(grad.size(1) <= ids_restore.size(1), op, ": argument 'grad' has ", grad.size(1),
                    " tokens, more than the L = ", ids_restore.size(1), " of 'ids_restore'");
}

// x_visible [N, K, D], mask_token [D] of its dtype, ids_restore [N, L], K <= L.
inline void check_unshuffle(const char* op, const at::Tensor& x_visible,
                            const at::Tensor& mask_token, const at::Tensor& ids_restore,
                            at::DeviceType dev) {
  check_float_tensor(op, "x_visible", x_visible, 3, dev);
  check_float(op, "mask_token", mask_token);
  check_same_device(op, "mask_token", mask_token, "x_visible", x_visible);
  check_dim(op, "mask_token", mask_token, 1);
  check_same_dtype(op, "mask_token", mask_token, "x_visible", x_visible);
  check_ids(op, "ids_restore", ids_restore, "x_visible", x_visible);
  const int64_t K = x_visible.size(1), D = x_visible.size(2), L = ids_restore.size(1);
  TORCH_CHECK_VALUE(mask_token.size(0) == D, op, ": argument 'mask_token' must have ", D,
                    " elements (the D of 'x_visible'), got ", mask_token.size(0));
  TORCH_CHECK_VALUE(K <= L, op, ": argument 'x_visible' has ", K, " tokens, more than the L = ", L,
                    " of 'ids_restore'");
}

// grad [N, L, D] of the unshuffled tokens; ids_restore [N, L]; 0 <= num_keep <= L.
inline void check_unshuffle_backward(const char* op, const at::Tensor& grad,
                                     const at::Tensor& ids_restore, int64_t num_keep,
                                     at::DeviceType dev) {
  check_float_tensor(op, "grad", grad, 3, dev);
  check_ids(op, "ids_restore", ids_restore, "grad", grad);
  const int64_t L = grad.size(1);
  TORCH_CHECK_VALUE(ids_restore.size(1) == L, op, ": argument 'ids_restore' must have shape [",
                    grad.size(0), ", ", L, "], got ", ids_restore.sizes());
  TORCH_CHECK_VALUE(num_keep >= 0 && num_keep <= L, op, ": argument 'num_keep' must be in [0, ", L,
                    "], got ", num_keep);
}

// imgs [N, C, H, W] (p divides H and W), ids_keep [N, K].
inline void check_gather_patches(const char* op, const at::Tensor& imgs, const at::Tensor& ids_keep,
                                 int64_t patch_size, at::DeviceType dev) {
  check_float_tensor(op, "imgs", imgs, 4, dev);
  check_ids(op, "ids_keep", ids_keep, "imgs", imgs);
  check_patches(op, patch_size, imgs.size(2), imgs.size(3));
}

// grad [N, K, p*p*C] of the gathered patches of a [N, C, H, W] image.
inline void check_gather_patches_backward(const char* op, const at::Tensor& grad,
                                          const at::Tensor& ids_keep, int64_t p, int64_t C,
                                          int64_t H, int64_t W, at::DeviceType dev) {
  check_float_tensor(op, "grad", grad, 3, dev);
  check_ids(op, "ids_keep", ids_keep, "grad", grad);
  TORCH_CHECK_VALUE(C > 0, op, ": argument 'channels' must be > 0, got ", C);
  check_count(op, "height", H);
  check_count(op, "width", W);
  check_patches(op, p, H, W);
  TORCH_CHECK_VALUE(grad.size(1) == ids_keep.size(1) && grad.size(2) == p * p * C, op,
                    ": argument 'grad' must have shape [", grad.size(0), ", ", ids_keep.size(1),
                    ", ", p * p * C, "], got ", grad.sizes());
}

// pred [N, L, p*p*C] against imgs [N, C, H, W] of its dtype; mask [N, L], any float dtype.
inline void check_masked_patch_loss(const char* op, const at::Tensor& pred, const at::Tensor& imgs,
                                    const at::Tensor& mask, int64_t p, at::DeviceType dev) {
  check_float_tensor(op, "pred", pred, 3, dev);
  check_float_tensor(op, "imgs", imgs, 4, dev);
  check_same_device(op, "imgs", imgs, "pred", pred);
  check_same_dtype(op, "imgs", imgs, "pred", pred);
  check_patches(op, p, imgs.size(2), imgs.size(3));
  const int64_t N = imgs.size(0), L = (imgs.size(2) / p) * (imgs.size(3) / p);
  const int64_t P = p * p * imgs.size(1);
  TORCH_CHECK_VALUE(pred.size(0) == N && pred.size(1) == L && pred.size(2) == P, op,
                    ": argument 'pred' must have shape [", N, ", ", L, ", ", P,
                    "] (N, patches, p*p*C of 'imgs'), got ", pred.sizes());
  check_float(op, "mask", mask);
  check_same_device(op, "mask", mask, "pred", pred);
  TORCH_CHECK_VALUE(mask.dim() == 2 && mask.size(0) == N && mask.size(1) == L, op,
                    ": argument 'mask' must have shape [", N, ", ", L, "], got ", mask.sizes());
}

// The backward's upstream gradient: one value (the loss is a scalar), any float dtype.
inline void check_scalar_grad(const char* op, const at::Tensor& grad, const at::Tensor& pred) {
  check_float(op, "grad", grad);
  check_same_device(op, "grad", grad, "pred", pred);
  TORCH_CHECK_VALUE(grad.dim() == 0, op,
                    ": argument 'grad' must have shape [] (the loss is a scalar), got ",
                    grad.sizes());
}

}  // namespace mae
}  // namespace pykernels
