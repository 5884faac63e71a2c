// Argument checks of the sigmoid contrastive loss, shared by the CPU and CUDA wrappers.
#pragma once
#include "common/checks.h"
#include "common/contrastive_args.h"

namespace pykernels {

inline void check_scalar(const char* op, const char* arg, const at::Tensor& t,
                         const at::Tensor& img) {
  check_float(op, arg, t);
  check_same_device(op, arg, t, "image_features", img);
  TORCH_CHECK_VALUE(t.numel() == 1 && t.dim() <= 1, op, ": argument '", arg,
                    "' must be a scalar tensor (shape [] or [1]), got shape ", t.sizes());
}

inline void check_ids(const char* op, const char* arg, const at::Tensor& ids, int64_t n,
                      const at::Tensor& img) {
  TORCH_CHECK_TYPE(ids.scalar_type() == at::kLong, op, ": argument '", arg, "' must be int64, got ",
                   ids.scalar_type());
  check_same_device(op, arg, ids, "image_features", img);
  TORCH_CHECK_VALUE(ids.dim() == 1 && ids.size(0) == n, op, ": argument '", arg,
                    "' must have shape [", n, "], got ", ids.sizes());
}

// The arguments of sigmoid_contrastive_loss: image_features [N, D], text_features [M, D] of
// one float dtype on one device of type dev; logit_scale and logit_bias one-element float
// tensors there; image_ids int64 [N] and text_ids int64 [M] there.
inline void check_sigmoid_contrastive_loss(const char* op, const at::Tensor& img,
                                           const at::Tensor& txt, const at::Tensor& scale,
                                           const at::Tensor& bias, const at::Tensor& image_ids,
                                           const at::Tensor& text_ids, at::DeviceType dev) {
  check_feature_pair(op, img, txt, dev);
  check_scalar(op, "logit_scale", scale, img);
  check_scalar(op, "logit_bias", bias, img);
  check_ids(op, "image_ids", image_ids, img.size(0), img);
  check_ids(op, "text_ids", text_ids, txt.size(0), img);
}

// ... and of its backward: the same, then grad [N] (the row losses' gradient).
inline void check_sigmoid_contrastive_loss_backward(const char* op, const at::Tensor& grad,
                                                    const at::Tensor& img, const at::Tensor& txt,
                                                    const at::Tensor& scale, const at::Tensor& bias,
                                                    const at::Tensor& image_ids,
                                                    const at::Tensor& text_ids,
                                                    at::DeviceType dev) {
  check_sigmoid_contrastive_loss(op, img, txt, scale, bias, image_ids, text_ids, dev);
  check_float(op, "grad", grad);
  check_same_device(op, "grad", grad, "image_features", img);
  TORCH_CHECK_VALUE(grad.dim() == 1 && grad.size(0) == img.size(0), op,
                    ": argument 'grad' must have shape [", img.size(0), "], got ", grad.sizes());
}

}  // namespace pykernels
