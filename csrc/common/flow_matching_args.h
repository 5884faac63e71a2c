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

#include <initializer_list>
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
// A tensor argument and its name.
struct Named {
  const char* arg;
  const at::Tensor& t;
};

// Samples [N, ...]: the first a float tensor with at least one dimension on a device of
// type `dev`, each other one on its device, with its dtype and shape.
inline void check_samples(const char* op, at::DeviceType dev, std::initializer_list<Named> named) {
  const Named& lead = *named.begin();
  check_float(op, lead.arg, lead.t);
  check_device_type(op, lead.arg, lead.t, dev);
  check_min_dim(op, lead.arg, lead.t, 1);
  for (const Named& x : named) {
    check_same_device(op, x.arg, x.t, lead.arg, lead.t);
    check_same_dtype(op, x.arg, x.t, lead.arg, lead.t);
    check_same_shape(op, x.arg, x.t, lead.arg, lead.t);
  }
}

// Per-sample noise levels: float tensors [N] on the samples' device, each value in [0, 1].
// The values are read on CPU only; on CUDA reading them back would synchronise with the
// device (a NaN passes: it propagates to the results like any NaN input).
inline void check_sigmas(const char* op, Named samples, std::initializer_list<Named> sigmas) {
  const int64_t N = samples.t.size(0);
  for (const Named& s : sigmas) {
    check_float(op, s.arg, s.t);
    check_same_device(op, s.arg, s.t, samples.arg, samples.t);
    TORCH_CHECK_VALUE(s.t.dim() == 1 && s.t.size(0) == N, op, ": argument '", s.arg,
                      "' must have shape [N] = [", N, "] (one per sample), got ", s.t.sizes());
    if (!s.t.is_cpu()) continue;
    const auto s64 = s.t.to(at::kDouble).contiguous();
    const double* p = s64.const_data_ptr<double>();
    for (int64_t i = 0; i < N; ++i) {
      TORCH_CHECK_VALUE(!(p[i] < 0.0 || p[i] > 1.0), op, ": argument '", s.arg, "' has ", p[i],
                        " at index ", i, ", outside [0, 1]");
    }
  }
}

// ------------------------------------------------------------------ per-op checks
inline void check_interpolate(const char* op, const at::Tensor& x0, const at::Tensor& noise,
                              const at::Tensor& sigmas, at::DeviceType dev) {
  check_samples(op, dev, {{"x0", x0}, {"noise", noise}});
  check_sigmas(op, {"x0", x0}, {{"sigmas", sigmas}});
}

inline int64_t check_loss(const char* op, const at::Tensor& m, const at::Tensor& x0,
                          const at::Tensor& noise, const at::Tensor& sigmas,
                          const std::string& weighting_scheme, at::DeviceType dev) {
  check_samples(op, dev, {{"model_output", m}, {"x0", x0}, {"noise", noise}});
  check_sigmas(op, {"model_output", m}, {{"sigmas", sigmas}});
  return weighting_from_name(op, weighting_scheme);
}

// The loss's checks, and grad [N] (any float dtype: the op converts it) and grad_noisy
// (x_t's gradient: like model_output) on model_output's device.
inline int64_t check_loss_backward(const char* op, const at::Tensor& grad,
                                   const c10::optional<at::Tensor>& grad_noisy, const at::Tensor& m,
                                   const at::Tensor& x0, const at::Tensor& noise,
                                   const at::Tensor& sigmas, const std::string& weighting_scheme,
                                   at::DeviceType dev) {
  const int64_t weighting = check_loss(op, m, x0, noise, sigmas, weighting_scheme, dev);
  check_float(op, "grad", grad);
  check_same_device(op, "grad", grad, "model_output", m);
  TORCH_CHECK_VALUE(grad.dim() == 1 && grad.size(0) == m.size(0), op,
                    ": argument 'grad' must have shape [", m.size(0), "], got ", grad.sizes());
  if (grad_noisy.has_value()) {
    check_samples(op, dev, {{"model_output", m}, {"grad_noisy", *grad_noisy}});
  }
  return weighting;
}

inline void check_euler_step(const char* op, const at::Tensor& m, const at::Tensor& sample,
                             const at::Tensor& sigmas, const at::Tensor& sigmas_next,
                             at::DeviceType dev) {
  check_samples(op, dev, {{"sample", sample}, {"model_output", m}});
  check_sigmas(op, {"sample", sample}, {{"sigmas", sigmas}, {"sigmas_next", sigmas_next}});
}

// The element-wise backward ops: grad [N, ...] (its dtype is the gradients') and sigmas.
inline void check_scale_backward(const char* op, const at::Tensor& grad,
                                 std::initializer_list<Named> sigmas, at::DeviceType dev) {
  check_samples(op, dev, {{"grad", grad}});
  check_sigmas(op, {"grad", grad}, sigmas);
}

}  // namespace flow_matching
}  // namespace pykernels
