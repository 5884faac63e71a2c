// Diffusion family, shared by the CPU and CUDA builds: the per-sample coefficient math
// (__host__ __device__), the argument checks, and the ops' wrappers (Ops, at the end),
// which check their arguments and call the kernels of cpu/diffusion.cpp or
// cuda/diffusion.cu.
//
// Every op views its tensors as N samples of D elements. Sample n reads a = alphas_cumprod
// [timesteps[n]] (and a' for a sampler step's previous timestep), computes its
// coefficients once, then streams its elements: each element is a short linear formula in
// those coefficients. Three kernels cover the ops; a new op with per-sample coefficients
// (a flow-matching interpolation, an Euler step) adds a coefficient function, not a kernel:
//   blend         out = cx x + cy y                      add_noise, get_velocity
//   target_error  (m - (tx x0 + tn noise))^2             diffusion_loss
//   sampler_step  x0 = xs s + xm m, clip, then           ddpm_step, ddim_step
//                 out = ox x0c + os s + om m + on z
#pragma once
#include <c10/macros/Macros.h>
#include <torch/library.h>

#include <array>
#include <cmath>
#include <string>

#include "common/checks.h"
#include "common/output_memory.h"
#include "common/dispatch.h"

// Per-element helpers are force-inlined: the CPU loops that call them must vectorise.
#if defined(__CUDACC__)
#define PK_HD_INLINE __host__ __device__ __forceinline__
#else
#define PK_HD_INLINE __attribute__((always_inline)) inline
#endif

namespace pykernels {
namespace diffusion {

enum Prediction : int64_t { kEpsilon = 0, kSample = 1, kV = 2 };
enum ClipMode : int64_t { kNoClip = 0, kClip = 1, kThreshold = 2 };

template <typename T>
PK_HD_INLINE T pk_sqrt(T x) {
#ifdef __CUDA_ARCH__
  return ::sqrt(x);  // CUDA's float / double overloads
#else
  return std::sqrt(x);
#endif
}

// alphas_cumprod[t] with t clamped into the table: CPU timesteps were range-checked first
// (IndexError); on CUDA nothing may be read back to the host, so an out-of-range timestep
// reads the nearest end of the table instead of out of bounds.
template <typename T, typename I>
PK_HD_INLINE T alpha_at(const T* table, int64_t len, I t) {
  const int64_t i = static_cast<int64_t>(t);
  return table[i < 0 ? 0 : (i >= len ? len - 1 : i)];
}

// ------------------------------------------------------------------ blend and target_error
// A sample's pair of coefficients (cx, cy) of out = cx x + cy y.
template <typename T>
struct Coefs {
  T cx, cy;
};

// add_noise (x0, noise): sqrt(a) x0 + sqrt(1 - a) noise.
template <typename T>
PK_HD_INLINE Coefs<T> add_noise_coefs(T a) {
  return {pk_sqrt(a), pk_sqrt(T(1) - a)};
}

// get_velocity (x0, noise): v = sqrt(a) noise - sqrt(1 - a) x0.
template <typename T>
PK_HD_INLINE Coefs<T> get_velocity_coefs(T a) {
  return {-pk_sqrt(T(1) - a), pk_sqrt(a)};
}

// diffusion_loss's target = tx x0 + tn noise: noise, x0 or the velocity.
template <typename T>
PK_HD_INLINE Coefs<T> diffusion_loss_coefs(int64_t prediction, T a) {
  if (prediction == kEpsilon) return {T(0), T(1)};
  if (prediction == kSample) return {T(1), T(0)};
  return get_velocity_coefs(a);
}

// ------------------------------------------------------------------ sampler_step
// One sampler step of a sample, as coefficients:
//   x0  = xs s + xm m                               (s = sample, m = model output)
//   x0c = clip / threshold (x0)
//   out = ox x0c + os s + om m + on z               (z = noise; not read when on == 0)
// With DDIM's use_clipped_model_output (reclip), where the clip changed x0:
//   out = kox x0c + kos s + on z                    (eps = (s - sqrt(a) x0c) / sqrt(1 - a))
// Where it did not (no clip, or strictly inside a scalar range) that eps is the model's
// own, and the first form gives it without the x0c form's 1/sqrt(1 - a)-fold cancellation
// (test_ddim_use_clipped_model_output_keeps_float32_precision). The threshold divides x0
// by a threshold that has a gradient of its own: it always takes the x0c form.
template <typename T>
struct Step {
  T xs, xm, ox, os, om, on, kox, kos;
  bool reclip;
};

// x0 = xs s + xm m for each prediction type.
template <typename T>
PK_HD_INLINE void set_x0_coefs(Step<T>& c, int64_t prediction, T a) {
  const T sa = pk_sqrt(a), sb = pk_sqrt(T(1) - a);
  if (prediction == kEpsilon) {
    c.xs = T(1) / sa;
    c.xm = -sb / sa;
  } else if (prediction == kSample) {
    c.xs = T(0);
    c.xm = T(1);
  } else {
    c.xs = sa;
    c.xm = -sb;
  }
}

// DDPM ("fixed_small" variance), a' = 1 for prev < 0:
//   ox = sqrt(a') beta / (1 - a), os = sqrt(a / a') (1 - a') / (1 - a), beta = (a' - a) / a'
//   (1 - a / a' without cancellation: a' - a is exact), on = [t > 0] sqrt(max(var, 1e-20)),
//   var = (1 - a') / (1 - a) beta.
template <typename T>
PK_HD_INLINE Step<T> ddpm_step_coefs(int64_t prediction, T a, T ap, int64_t t) {
  const T one(1), beta = (ap - a) / ap;
  Step<T> c;
  set_x0_coefs(c, prediction, a);
  c.ox = pk_sqrt(ap) * beta / (one - a);
  c.os = pk_sqrt(a / ap) * (one - ap) / (one - a);
  c.om = T(0);
  T var = (one - ap) / (one - a) * beta;
  var = var > T(1e-20) ? var : T(1e-20);
  c.on = t > 0 ? pk_sqrt(var) : T(0);
  c.kox = c.ox;
  c.kos = c.os;
  c.reclip = false;
  return c;
}

// DDIM's direction coefficient dir = sqrt(1 - a' - sd^2), sd = eta sqrt(var),
// var = (1 - a') / (1 - a) (1 - a / a'). var < 0 when a' < a (a step towards more noise):
// eta = 0 needs no sd (0 * sqrt(var) would be NaN and drop the direction term); eta > 0
// has no real sd and gives NaN, as the reference does. 1 - a' - sd^2 is taken in closed
// form, (1 - a') ((1 - eta^2) + eta^2 (a / a') (1 - a') / (1 - a)): a sum of two terms >= 0
// for eta <= 1 (exactly 1 - a' at eta = 0), where the difference cancels when sd^2 is
// close to 1 - a' (eta = 1 from a noisy t).
template <typename T>
PK_HD_INLINE T ddim_direction(T eta, T a, T ap, T sd) {
  const T one(1), e2 = eta * eta;
  // no 0 * inf at a' = 0
  const T noisy = e2 > T(0) ? e2 * (a / ap) * ((one - ap) / (one - a)) : T(0);
  T dir2 = (one - ap) * ((one - e2) + noisy);
  dir2 = sd != sd ? sd : dir2;                // a NaN sd stays NaN
  return pk_sqrt(dir2 < T(0) ? T(0) : dir2);  // NaN stays NaN
}

// DDIM: out = sqrt(a') x0c + dir eps + sd z, eps per prediction type (epsilon: m; sample:
// (s - sqrt(a) m) / sqrt(1 - a); v: sqrt(a) m + sqrt(1 - a) s).
template <typename T>
PK_HD_INLINE Step<T> ddim_step_coefs(int64_t prediction, T eta, bool use_clipped, T a, T ap) {
  const T one(1), sa = pk_sqrt(a), sb = pk_sqrt(one - a);
  const T var = (one - ap) / (one - a) * ((ap - a) / ap);
  const T sd = eta > T(0) ? eta * pk_sqrt(var) : T(0);
  const T dir = ddim_direction(eta, a, ap, sd);
  Step<T> c;
  set_x0_coefs(c, prediction, a);
  c.ox = pk_sqrt(ap);
  c.on = sd;
  c.reclip = use_clipped;
  c.kox = c.ox - dir * sa / sb;
  c.kos = dir / sb;
  if (prediction == kEpsilon) {
    c.os = T(0);
    c.om = dir;
  } else if (prediction == kSample) {
    c.os = dir / sb;
    c.om = -dir * sa / sb;
  } else {
    c.os = dir * sb;
    c.om = dir * sa;
  }
  return c;
}

// What a sampler step needs besides its tensors: the step (DDPM or DDIM), its parameters,
// and how x0 is clipped.
struct StepParams {
  bool ddim;
  int64_t prediction;
  double eta, final_alpha;
  bool use_clipped;
  int64_t clip_mode;
  double clip_range;
};

// Sample n's coefficients: a = table[t], a' = table[prev] (prev < 0: 1 for DDPM,
// final_alpha for DDIM).
template <typename T, typename I>
PK_HD_INLINE Step<T> step_coefs_at(const StepParams& p, const T* table, int64_t len, I t, I prev) {
  const T a = alpha_at(table, len, t);
  const bool final = static_cast<int64_t>(prev) < 0;
  if (!p.ddim)
    return ddpm_step_coefs<T>(p.prediction, a, final ? T(1) : alpha_at(table, len, prev),
                              static_cast<int64_t>(t));
  const T ap = final ? T(p.final_alpha) : alpha_at(table, len, prev);
  return ddim_step_coefs<T>(p.prediction, T(p.eta), p.use_clipped, a, ap);
}

// x0 -> x0c. lim: the clip range, or the per-sample threshold s (x0c = clamp(x0, -s, s) / s).
template <typename T>
PK_HD_INLINE T clip_x0(int64_t mode, T x0, T lim) {
  if (mode == kNoClip) return x0;
  const T c = x0 < -lim ? -lim : (x0 > lim ? lim : x0);
  return mode == kThreshold ? c / lim : c;
}

// Whether an element takes Step's first form: always without use_clipped (reclip); with
// it, where the clip left x0 as it was (no clip, or strictly inside a scalar range).
// kReclip: k.reclip when known at compile time (0 or 1; the CPU loops are instantiated for
// each, which keeps them vectorised), or -1 to read it.
template <typename T, int kReclip = -1>
PK_HD_INLINE bool own_eps(const Step<T>& k, int64_t mode, T lim, T x0) {
  const bool reclip = kReclip < 0 ? k.reclip : kReclip == 1;
  return !reclip || mode == kNoClip || (mode == kClip && x0 > -lim && x0 < lim);
}

// One element of a step: returns out (without noise) and writes x0c. A term whose
// coefficient is 0 is absent from the formula (DDPM's mean has no model_output term
// besides x0): its input is replaced by 0, so an inf there, clipped away in x0, does not
// come back as 0 * inf = NaN. Both forms are computed and one selected: selects, not
// branches, keep the CPU loops vectorised.
template <typename T, int kReclip = -1>
PK_HD_INLINE T step_element(const Step<T>& k, int64_t mode, T lim, T s, T m, T& x0c) {
  const T x0 = k.xs * s + k.xm * m;
  x0c = clip_x0<T>(mode, x0, lim);
  const T s_used = k.os != T(0) ? s : T(0);
  const T m_used = k.om != T(0) ? m : T(0);
  const T r = k.ox * x0c + k.os * s_used + k.om * m_used;
  const T r_x0c = k.kox * x0c + k.kos * (k.kos != T(0) ? s : T(0));
  return own_eps<T, kReclip>(k, mode, lim, x0) ? r : r_x0c;
}

// Gradients of one element of a step, given gp (grad of prev_sample) and gx (grad of
// pred_original_sample), with gc = ox gp + gx the gradient reaching x0c. torch.clamp's
// conventions: a scalar bound (clip) passes the gradient strictly inside; a tensor bound
// (the threshold) splits it half-half at a tie:
//   clip:      g_x0 = gc [-r < x0 < r]
//   threshold: g_x0 = gc w / q, w = 1 inside, 1/2 at +-q, 0 outside
//   grad_m = om gp + xm g_x0,  grad_s = os gp + xs g_x0.
// Returns this element's term of grad_threshold * q: gc (dc/dq - x0c), dc/dq = 1 above q,
// 1/2 at q, -1 below -q, -1/2 at -q.
template <typename T, int kReclip = -1>
PK_HD_INLINE T step_grad_element(const Step<T>& k, int64_t mode, T lim, T s, T m, T gp, T gx, T& gm,
                                 T& gs) {
  const T x0 = k.xs * s + k.xm * m;
  const bool own = own_eps<T, kReclip>(k, mode, lim, x0);
  const T ox = own ? k.ox : k.kox, os = own ? k.os : k.kos, om = own ? k.om : T(0);
  const T gc = ox * gp + gx;
  T g0 = gc, gq = T(0);
  if (mode != kNoClip) {
    g0 = (x0 > -lim && x0 < lim) ? gc : T(0);
    if (mode == kThreshold) {
      const T tie = x0 == lim ? T(0.5) : T(0), ntie = x0 == -lim ? T(0.5) : T(0);
      g0 = (g0 + gc * (tie + ntie)) / lim;
      const T above = (x0 > lim ? T(1) : T(0)) - (x0 < -lim ? T(1) : T(0)) + tie - ntie;
      gq = gc * (above - clip_x0<T>(kThreshold, x0, lim));
    }
  }
  gm = om * gp + k.xm * g0;
  gs = os * gp + k.xs * g0;
  return gq;
}

// The alphas_cumprod table in the accumulation dtype and the timesteps as int64, as the
// kernels read them.
template <typename acc>
struct Schedule {
  at::Tensor table, t;
  Schedule(const at::Tensor& table_, const at::Tensor& t_)
      : table(table_.to(c10::CppTypeToScalarType<acc>::value).contiguous()),
        t(t_.to(at::kLong).contiguous()) {}
  // alphas_cumprod[t[n]], for CPU tensors.
  acc alpha(int64_t n) const {
    return alpha_at(table.const_data_ptr<acc>(), table.numel(), t.const_data_ptr<int64_t>()[n]);
  }
};

// ------------------------------------------------------------------ argument checks
inline void check_table(const char* op, const at::Tensor& table, const char* like_arg,
                        const at::Tensor& like) {
  TORCH_CHECK_TYPE(table.scalar_type() == at::kFloat || table.scalar_type() == at::kDouble, op,
                   ": argument 'alphas_cumprod' must be float32 (or float64), got ",
                   table.scalar_type());
  TORCH_CHECK_VALUE(table.dim() == 1 && table.size(0) > 0, op,
                    ": argument 'alphas_cumprod' must be a non-empty 1-D table [T], got shape ",
                    table.sizes());
  check_same_device(op, "alphas_cumprod", table, like_arg, like);
}

// t: int64 or int32 [N] on like's device. On CPU, values in [0, T - 1] (prev timesteps:
// any value below T, negatives meaning "final"); on CUDA that would need a host sync:
// see alpha_at.
inline void check_timesteps(const char* op, const char* arg, const at::Tensor& t,
                            const char* like_arg, const at::Tensor& like, int64_t len,
                            bool allow_negative) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kLong || t.scalar_type() == at::kInt, op, ": argument '",
                   arg, "' must be an int64 or int32 tensor, got ", t.scalar_type());
  check_same_device(op, arg, t, like_arg, like);
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == like.size(0), op, ": argument '", arg,
                    "' must have shape [N] = [", like.size(0), "] (one per sample), got ",
                    t.sizes());
  if (!t.is_cpu()) return;
  const auto t64 = t.to(at::kLong).contiguous();
  const int64_t* p = t64.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < t64.numel(); ++i) {
    TORCH_CHECK_INDEX((allow_negative || p[i] >= 0) && p[i] < len, op, ": argument '", arg,
                      "' has ", p[i], ", outside [", allow_negative ? "-inf" : "0", ", ", len - 1,
                      "] (at index ", i, "; alphas_cumprod has ", len, " entries)");
  }
}

// x: a float tensor [N, ...] on `dev`; the others (name, tensor) of its shape, dtype, device.
inline void check_samples(const char* op, const char* arg, const at::Tensor& x,
                          at::DeviceType dev) {
  check_float(op, arg, x);
  check_device_type(op, arg, x, dev);
  check_min_dim(op, arg, x, 1);
}

inline void check_like(const char* op, const char* arg, const at::Tensor& y, const char* ref_arg,
                       const at::Tensor& x) {
  check_same_device(op, arg, y, ref_arg, x);
  check_same_dtype(op, arg, y, ref_arg, x);
  check_same_shape(op, arg, y, ref_arg, x);
}

// The prediction_type string as a Prediction.
inline int64_t prediction_index(const char* op, c10::string_view prediction_type) {
  if (prediction_type == "epsilon") return kEpsilon;
  if (prediction_type == "sample") return kSample;
  if (prediction_type == "v_prediction") return kV;
  TORCH_CHECK_VALUE(false, op, ": argument 'prediction_type' must be one of ('epsilon', 'sample', ",
                    "'v_prediction'), got '", std::string(prediction_type), "'");
  return -1;
}

// reduction: "mean" or "sum" (a scalar), "none" (per element).
inline bool is_elementwise(const char* op, c10::string_view reduction) {
  TORCH_CHECK_VALUE(reduction == "mean" || reduction == "sum" || reduction == "none", op,
                    ": argument 'reduction' must be one of ('mean', 'sum', 'none'), got '",
                    std::string(reduction), "'");
  return reduction == "none";
}

// ------------------------------------------------------------------ per-op checks
// add_noise / get_velocity: x0 [N, ...], noise like x0, timesteps [N].
inline void check_blend(const char* op, const at::Tensor& x0, const at::Tensor& noise,
                        const at::Tensor& t, const at::Tensor& table, at::DeviceType dev) {
  check_samples(op, "x0", x0, dev);
  check_like(op, "noise", noise, "x0", x0);
  check_table(op, table, "x0", x0);
  check_timesteps(op, "timesteps", t, "x0", x0, table.size(0), false);
}

// Their backward: grad [N, ...] (any float dtype), timesteps [N].
inline void check_blend_backward(const char* op, const at::Tensor& grad, const at::Tensor& t,
                                 const at::Tensor& table, at::DeviceType dev) {
  check_samples(op, "grad", grad, dev);
  check_table(op, table, "grad", grad);
  check_timesteps(op, "timesteps", t, "grad", grad, table.size(0), false);
}

inline void check_diffusion_loss(const char* op, const at::Tensor& m, const at::Tensor& x0,
                                 const at::Tensor& noise, const at::Tensor& t,
                                 const at::Tensor& table, at::DeviceType dev) {
  check_samples(op, "model_output", m, dev);
  check_like(op, "x0", x0, "model_output", m);
  check_like(op, "noise", noise, "model_output", m);
  check_table(op, table, "model_output", m);
  check_timesteps(op, "timesteps", t, "model_output", m, table.size(0), false);
}

// The loss's gradient: per element (reduction "none") or a scalar, any float dtype.
inline void check_loss_grad(const char* op, const at::Tensor& grad, const at::Tensor& m,
                            bool elementwise) {
  check_float(op, "grad", grad);
  check_same_device(op, "grad", grad, "model_output", m);
  TORCH_CHECK_VALUE(elementwise ? grad.sizes() == m.sizes() : grad.dim() == 0, op,
                    ": argument 'grad' must have shape ",
                    elementwise ? m.sizes() : at::IntArrayRef(), ", got ", grad.sizes());
}

// A sampler step's tensors and parameters (noise: the forward only; threshold: the
// per-sample dynamic-thresholding limit, in the accumulation dtype).
inline void check_step(const char* op, const at::Tensor& m, const at::Tensor& s,
                       const at::Tensor* noise, const at::Tensor& t, const at::Tensor& prev,
                       const at::Tensor& table, const c10::optional<at::Tensor>& threshold,
                       double clip_range, at::DeviceType dev) {
  check_samples(op, "sample", s, dev);
  check_like(op, "model_output", m, "sample", s);
  if (noise != nullptr) check_like(op, "noise", *noise, "sample", s);
  TORCH_CHECK_VALUE(clip_range > 0, op, ": argument 'clip_sample_range' must be > 0, got ",
                    clip_range);
  check_table(op, table, "sample", s);
  check_timesteps(op, "timesteps", t, "sample", s, table.size(0), false);
  check_timesteps(op, "prev_timesteps", prev, "sample", s, table.size(0), true);
  if (!threshold.has_value()) return;
  const auto& q = *threshold;
  TORCH_CHECK_TYPE(
      q.scalar_type() == at::toOpMathType(s.scalar_type()), op,
      ": argument 'threshold' must be in the accumulation dtype (float32, float64 for ",
      "float64 samples), got ", q.scalar_type());
  check_same_device(op, "threshold", q, "sample", s);
  TORCH_CHECK_VALUE(q.dim() == 1 && q.size(0) == s.size(0), op,
                    ": argument 'threshold' must have shape [N] = [", s.size(0), "], got ",
                    q.sizes());
}

// DDIM's own parameters.
inline void check_ddim(const char* op, double eta, double final_alpha) {
  TORCH_CHECK_VALUE(eta >= 0, op, ": argument 'eta' must be >= 0, got ", eta);
  TORCH_CHECK_VALUE(final_alpha > 0 && final_alpha <= 1, op,
                    ": argument 'final_alpha_cumprod' must be in (0, 1], got ", final_alpha);
}

// The backward's two upstream gradients, each like the sample (dtype included).
inline void check_step_grads(const char* op, const at::Tensor& gp, const at::Tensor& gx,
                             const at::Tensor& s) {
  check_like(op, "grad_prev_sample", gp, "sample", s);
  check_like(op, "grad_pred_original_sample", gx, "sample", s);
}

// A step's checks (noise: the forward's, null for the backward) and its parameters as the
// kernels take them.
inline StepParams checked_step(const char* op, bool ddim, const at::Tensor& m, const at::Tensor& t,
                               const at::Tensor& prev, const at::Tensor& s, const at::Tensor& table,
                               const at::Tensor* noise, const c10::optional<at::Tensor>& threshold,
                               c10::string_view prediction_type, bool clip_sample,
                               double clip_range, double eta, bool use_clipped, double final_alpha,
                               at::DeviceType dev) {
  check_step(op, m, s, noise, t, prev, table, threshold, clip_range, dev);
  if (ddim) check_ddim(op, eta, final_alpha);
  const int64_t clip = threshold.has_value() ? kThreshold : (clip_sample ? kClip : kNoClip);
  return {
      ddim,      prediction_index(op, prediction_type), eta, final_alpha, ddim && use_clipped, clip,
      clip_range};
}

// The three gradients of diffusion_loss_backward: like model_output where output_mask asks
// for one, an empty tensor otherwise (inputs that do not require grad, usually x0 and noise).
inline std::array<at::Tensor, 3> loss_grads(const at::Tensor& m, std::array<bool, 3> mask) {
  std::array<at::Tensor, 3> g;
  for (int i = 0; i < 3; ++i)
    g[i] = mask[i] ? empty_output(m.sizes(), m.options()) : at::empty({0}, m.options());
  return g;
}

// ------------------------------------------------------------------ the ops
// The coefficient functions as the functors the kernels take (host and device).
struct AddNoiseCoefs {
  template <typename T>
  PK_HD_INLINE Coefs<T> operator()(T a) const {
    return add_noise_coefs(a);
  }
};
struct GetVelocityCoefs {
  template <typename T>
  PK_HD_INLINE Coefs<T> operator()(T a) const {
    return get_velocity_coefs(a);
  }
};

// The ops' wrappers, written once for the CPU and CUDA builds: each checks its arguments
// (on the device type K::kDevice) and calls the kernels of K: blend, blend_backward,
// target_error, target_error_backward, sampler_step and sampler_step_backward.
template <typename K>
struct Ops {
  using T = at::Tensor;
  using OptT = c10::optional<at::Tensor>;

  static T add_noise(const T& x0, const T& noise, const T& timesteps, const T& alphas_cumprod) {
    const char* op = "pykernels::add_noise";
    check_blend(op, x0, noise, timesteps, alphas_cumprod, K::kDevice);
    return K::blend(op, x0, noise, timesteps, alphas_cumprod, AddNoiseCoefs{});
  }
  static std::tuple<T, T> add_noise_backward(const T& grad, const T& timesteps,
                                             const T& alphas_cumprod) {
    const char* op = "pykernels::add_noise_backward";
    check_blend_backward(op, grad, timesteps, alphas_cumprod, K::kDevice);
    return K::blend_backward(op, grad, timesteps, alphas_cumprod, AddNoiseCoefs{});
  }
  static T get_velocity(const T& x0, const T& noise, const T& timesteps, const T& alphas_cumprod) {
    const char* op = "pykernels::get_velocity";
    check_blend(op, x0, noise, timesteps, alphas_cumprod, K::kDevice);
    return K::blend(op, x0, noise, timesteps, alphas_cumprod, GetVelocityCoefs{});
  }
  static std::tuple<T, T> get_velocity_backward(const T& grad, const T& timesteps,
                                                const T& alphas_cumprod) {
    const char* op = "pykernels::get_velocity_backward";
    check_blend_backward(op, grad, timesteps, alphas_cumprod, K::kDevice);
    return K::blend_backward(op, grad, timesteps, alphas_cumprod, GetVelocityCoefs{});
  }

  // reduction "mean" divides the sum by numel (count), "sum" by 1.
  static T diffusion_loss(const T& model_output, const T& x0, const T& noise, const T& timesteps,
                          const T& alphas_cumprod, c10::string_view prediction_type,
                          c10::string_view reduction) {
    const char* op = "pykernels::diffusion_loss";
    check_diffusion_loss(op, model_output, x0, noise, timesteps, alphas_cumprod, K::kDevice);
    const int64_t prediction = prediction_index(op, prediction_type);
    const bool elementwise = is_elementwise(op, reduction);
    return K::target_error(op, model_output, x0, noise, timesteps, alphas_cumprod, prediction,
                           elementwise, count(reduction, model_output));
  }
  static std::tuple<T, T, T> diffusion_loss_backward(const T& grad, const T& model_output,
                                                     const T& x0, const T& noise,
                                                     const T& timesteps, const T& alphas_cumprod,
                                                     c10::string_view prediction_type,
                                                     c10::string_view reduction,
                                                     std::array<bool, 3> output_mask) {
    const char* op = "pykernels::diffusion_loss_backward";
    check_diffusion_loss(op, model_output, x0, noise, timesteps, alphas_cumprod, K::kDevice);
    const int64_t prediction = prediction_index(op, prediction_type);
    const bool elementwise = is_elementwise(op, reduction);
    check_loss_grad(op, grad, model_output, elementwise);
    return K::target_error_backward(op, grad, model_output, x0, noise, timesteps, alphas_cumprod,
                                    prediction, elementwise, count(reduction, model_output),
                                    output_mask);
  }

  static std::tuple<T, T> ddpm_step(const T& model_output, const T& timesteps, const T& sample,
                                    const T& alphas_cumprod, const T& prev_timesteps,
                                    const OptT& noise, const OptT& threshold,
                                    c10::string_view prediction_type, bool clip_sample,
                                    double clip_sample_range) {
    const char* op = "pykernels::ddpm_step";
    const auto p =
        checked_step(op, false, model_output, timesteps, prev_timesteps, sample, alphas_cumprod,
                     noise.has_value() ? &*noise : nullptr, threshold, prediction_type, clip_sample,
                     clip_sample_range, 0.0, false, 1.0, K::kDevice);
    return K::sampler_step(op, model_output, timesteps, prev_timesteps, sample, alphas_cumprod,
                           noise, threshold, p);
  }
  static std::tuple<T, T, T> ddpm_step_backward(const T& grad_prev_sample,
                                                const T& grad_pred_original_sample,
                                                const T& model_output, const T& timesteps,
                                                const T& sample, const T& alphas_cumprod,
                                                const T& prev_timesteps, const OptT& threshold,
                                                c10::string_view prediction_type, bool clip_sample,
                                                double clip_sample_range) {
    const char* op = "pykernels::ddpm_step_backward";
    const auto p = checked_step(op, false, model_output, timesteps, prev_timesteps, sample,
                                alphas_cumprod, nullptr, threshold, prediction_type, clip_sample,
                                clip_sample_range, 0.0, false, 1.0, K::kDevice);
    check_step_grads(op, grad_prev_sample, grad_pred_original_sample, sample);
    return K::sampler_step_backward(op, grad_prev_sample, grad_pred_original_sample, model_output,
                                    timesteps, prev_timesteps, sample, alphas_cumprod, threshold,
                                    p);
  }

  static std::tuple<T, T> ddim_step(const T& model_output, const T& timesteps,
                                    const T& prev_timesteps, const T& sample,
                                    const T& alphas_cumprod, double eta, const OptT& noise,
                                    const OptT& threshold, c10::string_view prediction_type,
                                    bool clip_sample, double clip_sample_range,
                                    bool use_clipped_model_output, double final_alpha_cumprod) {
    const char* op = "pykernels::ddim_step";
    const auto p = checked_step(op, true, model_output, timesteps, prev_timesteps, sample,
                                alphas_cumprod, noise.has_value() ? &*noise : nullptr, threshold,
                                prediction_type, clip_sample, clip_sample_range, eta,
                                use_clipped_model_output, final_alpha_cumprod, K::kDevice);
    return K::sampler_step(op, model_output, timesteps, prev_timesteps, sample, alphas_cumprod,
                           noise, threshold, p);
  }
  static std::tuple<T, T, T> ddim_step_backward(
      const T& grad_prev_sample, const T& grad_pred_original_sample, const T& model_output,
      const T& timesteps, const T& prev_timesteps, const T& sample, const T& alphas_cumprod,
      double eta, const OptT& threshold, c10::string_view prediction_type, bool clip_sample,
      double clip_sample_range, bool use_clipped_model_output, double final_alpha_cumprod) {
    const char* op = "pykernels::ddim_step_backward";
    const auto p =
        checked_step(op, true, model_output, timesteps, prev_timesteps, sample, alphas_cumprod,
                     nullptr, threshold, prediction_type, clip_sample, clip_sample_range, eta,
                     use_clipped_model_output, final_alpha_cumprod, K::kDevice);
    check_step_grads(op, grad_prev_sample, grad_pred_original_sample, sample);
    return K::sampler_step_backward(op, grad_prev_sample, grad_pred_original_sample, model_output,
                                    timesteps, prev_timesteps, sample, alphas_cumprod, threshold,
                                    p);
  }

 private:
  static double count(c10::string_view reduction, const T& x) {
    return reduction == "mean" ? static_cast<double>(x.numel()) : 1.0;
  }
};

// Every op of the family, for TORCH_LIBRARY_IMPL(pykernels, <device>, m).
template <typename K>
void register_ops(torch::Library& m) {
  using O = Ops<K>;
  m.impl("add_noise", &O::add_noise);
  m.impl("add_noise_backward", &O::add_noise_backward);
  m.impl("get_velocity", &O::get_velocity);
  m.impl("get_velocity_backward", &O::get_velocity_backward);
  m.impl("diffusion_loss", &O::diffusion_loss);
  m.impl("diffusion_loss_backward", &O::diffusion_loss_backward);
  m.impl("ddpm_step", &O::ddpm_step);
  m.impl("ddpm_step_backward", &O::ddpm_step_backward);
  m.impl("ddim_step", &O::ddim_step);
  m.impl("ddim_step_backward", &O::ddim_step_backward);
}

}  // namespace diffusion
}  // namespace pykernels
