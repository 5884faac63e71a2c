// Argument checks of the contrastive family (info_nce_loss), shared by the CPU and CUDA
// wrappers (one call per wrapper), and split_lse, the backward's view of the saved
// log-sum-exps.
#pragma once
#include <utility>

#include "common/checks.h"

namespace pykernels {

// image_features [N, D] and text_features [M, D] of one float dtype on one device of type dev
// (the contrastive and sigmoid_contrastive ops).
inline void check_feature_pair(const char* op, const at::Tensor& img, const at::Tensor& txt,
                               at::DeviceType dev) {
  check_float_pair(op, "image_features", img, "text_features", txt, dev);
  check_dim(op, "image_features", img, 2);
  check_dim(op, "text_features", txt, 2);
  TORCH_CHECK_VALUE(img.size(1) == txt.size(1), op,
                    ": arguments 'image_features' [N, D] and 'text_features' [M, D] must have the "
                    "same feature size D, got ",
                    img.sizes(), " and ", txt.sizes());
}

// The arguments of info_nce_loss: image_features [N, D], text_features [M, D] of one float
// dtype on one device of type dev; logit_scale a one-element float tensor (shape [] or [1])
// there; labels int64 [N] there (their range is checked by the CPU op only: a GPU check
// would sync with the host).
inline void check_info_nce_loss(const char* op, const at::Tensor& img, const at::Tensor& txt,
                                const at::Tensor& scale, const at::Tensor& labels,
                                at::DeviceType dev) {
  check_feature_pair(op, img, txt, dev);
  check_float(op, "logit_scale", scale);
  check_same_device(op, "logit_scale", scale, "image_features", img);
  TORCH_CHECK_VALUE(scale.numel() == 1 && scale.dim() <= 1, op,
                    ": argument 'logit_scale' must be a scalar tensor (shape [] or [1]), "
                    "got shape ",
                    scale.sizes());
  TORCH_CHECK_TYPE(labels.scalar_type() == at::kLong, op, ": argument 'labels' must be int64, got ",
                   labels.scalar_type());
  check_same_device(op, "labels", labels, "image_features", img);
  TORCH_CHECK_VALUE(labels.dim() == 1 && labels.size(0) == img.size(0), op,
                    ": argument 'labels' must have shape [N] = [", img.size(0), "], got ",
                    labels.sizes());
}

// The log-sum-exps the forward saves (row_lse, col_lse) are float64: at |L| ~ 15 a
// float32 lse is rounded by 1e-6, the size of a confident row's loss, and the softmax
// of the positive, exp(L - lse), carried that error (8x PyTorch's; test_fuzz_contrastive).
// A backward splits each into hi + lo in the accumulation dtype and forms L - lse as
// (L - hi) - lo, exact up to the rounding of L itself. lo is 0 where lse is infinite.
inline std::pair<at::Tensor, at::Tensor> split_lse(const at::Tensor& lse, at::ScalarType acc) {
  const auto l = lse.to(at::kDouble);
  const auto hi = l.to(acc).contiguous();
  const auto lo = (l - hi.to(at::kDouble)).nan_to_num(0.0, 0.0, 0.0).to(acc).contiguous();
  return {hi, lo};
}

// The arguments of info_nce_loss_backward: info_nce_loss's, then grad [K, N] (K = 2 if
// symmetric else 1), row_lse [N], col_lse [M] (symmetric) or [0] (any float dtype; the
// forward gives float64).
inline void check_info_nce_loss_backward(const char* op, const at::Tensor& grad,
                                         const at::Tensor& img, const at::Tensor& txt,
                                         const at::Tensor& scale, const at::Tensor& labels,
                                         const at::Tensor& row_lse, const at::Tensor& col_lse,
                                         bool symmetric, at::DeviceType dev) {
  check_info_nce_loss(op, img, txt, scale, labels, dev);
  const int64_t K = symmetric ? 2 : 1, N = img.size(0), M = txt.size(0);
  check_same_device(op, "grad", grad, "image_features", img);
  check_float(op, "grad", grad);
  TORCH_CHECK_VALUE(grad.dim() == 2 && grad.size(0) == K && grad.size(1) == N, op,
                    ": argument 'grad' must have shape [", K, ", ", N, "], got ", grad.sizes());
  check_same_device(op, "row_lse", row_lse, "image_features", img);
  // read as float64: an integer or bool one would be converted silently
  check_float(op, "row_lse", row_lse);
  TORCH_CHECK_VALUE(row_lse.dim() == 1 && row_lse.size(0) == N, op,
                    ": argument 'row_lse' must have shape [", N, "], got ", row_lse.sizes());
  check_same_device(op, "col_lse", col_lse, "image_features", img);
  check_float(op, "col_lse", col_lse);
  TORCH_CHECK_VALUE(col_lse.dim() == 1 && col_lse.size(0) == (symmetric ? M : 0), op,
                    ": argument 'col_lse' must have shape [", (symmetric ? M : 0), "], got ",
                    col_lse.sizes());
}

}  // namespace pykernels
