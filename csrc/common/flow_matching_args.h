// Flow-matching family: argument checks and the per-sample coefficients, shared by the CPU
// and CUDA kernels (the coefficient functions are __host__ __device__).
//
// Every op works on [N, ...] tensors viewed as N samples of D elements, with one noise
// level sigmas[n] in [0, 1] per sample (the Python API turns scalars and [N, 1, ..., 1]
// shapes into [N]). Each op is "per-sample coefficients x elements": a kernel computes
// its sample's coefficients once, in the accumulation type, then streams the elements.
// pykernels/reference/flow_matching.py has the math.
#pragma once
#include <c10/macros/Macros.h>

#include <string>

#include "common/checks.h"

namespace pykernels {
namespace flow_matching {

// The SD3 loss weightings (diffusers' compute_loss_weighting_for_sd3), by name.
enum Weighting : int64_t { kNone = 0, kSigmaSqrt = 1, kCosmap = 2 };

// sigma_sqrt weights 1 / sigma^2 with sigma clamped here: finite at sigma = 0, and
// diffusers' weight for every sigma of a schedule with up to 10000 training steps.
constexpr double kSigmaSqrtMin = 1e-4;
constexpr double kPi = 3.14159265358979323846;

inline int64_t weighting_from_name(const char* op, const std::string& name) {
  if (name == "none") return kNone;
  if (name == "sigma_sqrt") return kSigmaSqrt;
  TORCH_CHECK_VALUE(name == "cosmap", op, ": argument 'weighting_scheme' must be one of ",
                    "('none', 'sigma_sqrt', 'cosmap'), got '", name, "'");
  return kCosmap;
}

// How flow_matching_loss weights a sample's mean squared error.
struct LossArgs {
  int64_t weighting;  // Weighting
  bool precondition;  // precondition_outputs
};

// c(sigma), the per-sample factor of the mean squared velocity error d = m - (eps - x0):
//   w = 1 | 1 / max(sigma, kSigmaSqrtMin)^2 | 2 / (pi (1 - 2 sigma + 2 sigma^2));
//   c = w, or w sigma^2 with preconditioning (its error -sigma m + x_t - x0 is -sigma d),
//   where sigma_sqrt gives exactly 1 (the sigma -> 0 limit of sigma^-2 sigma^2).
template <typename T>
C10_HOST_DEVICE inline T loss_weight(int64_t weighting, bool precondition, T sigma) {
  if (weighting == kSigmaSqrt) {
    if (precondition) return T(1);
    const T s = sigma > T(kSigmaSqrtMin) ? sigma : T(kSigmaSqrtMin);
    return T(1) / (s * s);
  }
  T w = T(1);
  if (weighting == kCosmap) w = T(2) / (T(kPi) * (T(1) - T(2) * sigma + T(2) * sigma * sigma));
  return precondition ? w * (sigma * sigma) : w;
}

// ------------------------------------------------------------------ argument checks
// x: a float tensor [N, ...] on a device of type `dev`.
inline void check_samples(const char* op, const char* arg, const at::Tensor& x,
                          at::DeviceType dev) {
  check_float(op, arg, x);
  check_device_type(op, arg, x, dev);
  check_min_dim(op, arg, x, 1);
}

// y: the same device, dtype and shape as x.
inline void check_like(const char* op, const char* arg, const at::Tensor& y, const char* ref_arg,
                       const at::Tensor& x) {
  check_same_device(op, arg, y, ref_arg, x);
  check_same_dtype(op, arg, y, ref_arg, x);
  check_same_shape(op, arg, y, ref_arg, x);
}

// Per-sample noise levels: a float tensor [N] on x's device, each value in [0, 1]. The
// values are read on CPU only; on CUDA reading them back would synchronise with the
// device (a NaN passes: it propagates to the results like any NaN input).
inline void check_sigmas(const char* op, const char* arg, const at::Tensor& s, const char* ref_arg,
                         const at::Tensor& x) {
  check_float(op, arg, s);
  check_same_device(op, arg, s, ref_arg, x);
  TORCH_CHECK_VALUE(s.dim() == 1 && s.size(0) == x.size(0), op, ": argument '", arg,
                    "' must have shape [N] = [", x.size(0), "] (one per sample), got ", s.sizes());
  if (!s.is_cpu()) return;
  const auto s64 = s.to(at::kDouble).contiguous();
  const double* p = s64.const_data_ptr<double>();
  for (int64_t i = 0; i < s64.numel(); ++i) {
    TORCH_CHECK_VALUE(!(p[i] < 0.0 || p[i] > 1.0), op, ": argument '", arg, "' has ", p[i],
                      " at index ", i, ", outside [0, 1]");
  }
}

// grad: a float tensor of `shape` on x's device (any float dtype: the op converts it).
inline void check_grad(const char* op, const char* arg, const at::Tensor& g, at::IntArrayRef shape,
                       const char* ref_arg, const at::Tensor& x) {
  check_float(op, arg, g);
  check_same_device(op, arg, g, ref_arg, x);
  TORCH_CHECK_VALUE(g.sizes() == shape, op, ": argument '", arg, "' must have shape ", shape,
                    ", got ", g.sizes());
}

// ------------------------------------------------------------------ per-op checks
inline void check_interpolate(const char* op, const at::Tensor& x0, const at::Tensor& noise,
                              const at::Tensor& sigmas, at::DeviceType dev) {
  check_samples(op, "x0", x0, dev);
  check_like(op, "noise", noise, "x0", x0);
  check_sigmas(op, "sigmas", sigmas, "x0", x0);
}

inline int64_t check_loss(const char* op, const at::Tensor& m, const at::Tensor& x0,
                          const at::Tensor& noise, const at::Tensor& sigmas,
                          const std::string& weighting_scheme, at::DeviceType dev) {
  check_samples(op, "model_output", m, dev);
  check_like(op, "x0", x0, "model_output", m);
  check_like(op, "noise", noise, "model_output", m);
  check_sigmas(op, "sigmas", sigmas, "model_output", m);
  return weighting_from_name(op, weighting_scheme);
}

inline void check_euler_step(const char* op, const at::Tensor& m, const at::Tensor& sample,
                             const at::Tensor& sigmas, const at::Tensor& sigmas_next,
                             at::DeviceType dev) {
  check_samples(op, "sample", sample, dev);
  check_like(op, "model_output", m, "sample", sample);
  check_sigmas(op, "sigmas", sigmas, "sample", sample);
  check_sigmas(op, "sigmas_next", sigmas_next, "sample", sample);
}

}  // namespace flow_matching
}  // namespace pykernels
