// Diffusion family: argument checks and the per-sample coefficient math, shared by the
// CPU and CUDA kernels (the coefficient functions are __host__ __device__).
//
// Every op works on [N, ...] tensors viewed as N samples of D elements; sample n uses
// timesteps[n] to index the alphas_cumprod table (in the accumulation dtype). All the
// math of an op is "out = per-sample coefficients x elements", so each kernel computes
// its sample's coefficients once (from two table reads) and then streams elements.
#pragma once
#include <array>
#include <c10/macros/Macros.h>

#include <cmath>
#include <string>

#include "common/checks.h"

namespace pykernels {
namespace diffusion {

// Kinds of the "mix" op: out = cx x + cy y with per-sample coefficients.
enum MixKind : int64_t {
  kAddNoise = 0,   // (x0, noise) -> sqrt(a) x0 + sqrt(1-a) noise
  kVelocity = 1,   // (x0, noise) -> sqrt(a) noise - sqrt(1-a) x0
  kX0Epsilon = 2,  // (sample, model_output) -> predicted x0, one per prediction type
  kX0Sample = 3,
  kX0V = 4,
};
enum Prediction : int64_t { kEpsilon = 0, kSample = 1, kV = 2 };
enum StepKind : int64_t { kDDPM = 0, kDDIM = 1 };
enum ClipMode : int64_t { kNoClip = 0, kClip = 1, kThreshold = 2 };

template <typename T>
C10_HOST_DEVICE inline T pk_sqrt(T x) {
#ifdef __CUDA_ARCH__
  return ::sqrt(x);  // CUDA's float / double overloads
#else
  return std::sqrt(x);
#endif
}

// Timesteps are clamped into the table on every device: on CPU they were range-checked
// first (IndexError), on CUDA nothing may be read back to the host, so an out-of-range
// timestep reads the nearest end of the table instead of out of bounds.
template <typename T, typename I>
C10_HOST_DEVICE inline T alpha_at(const T* table, int64_t len, I t) {
  const int64_t i = static_cast<int64_t>(t);
  return table[i < 0 ? 0 : (i >= len ? len - 1 : i)];
}

// Coefficients (cx, cy) of the mix op.
template <typename T>
struct Mix {
  T cx, cy;
};

template <typename T>
C10_HOST_DEVICE inline Mix<T> mix_coefs(int64_t kind, T a) {
  const T sa = pk_sqrt(a), sb = pk_sqrt(T(1) - a);
  switch (kind) {
    case kAddNoise: return {sa, sb};
    case kVelocity: return {-sb, sa};
    case kX0Epsilon: return {T(1) / sa, -sb / sa};
    case kX0Sample: return {T(0), T(1)};
    default: return {sa, -sb};
  }
}

// Training target = tx x0 + tn noise.
template <typename T>
C10_HOST_DEVICE inline Mix<T> target_coefs(int64_t prediction, T a) {
  if (prediction == kEpsilon) return {T(0), T(1)};
  if (prediction == kSample) return {T(1), T(0)};
  return mix_coefs<T>(kVelocity, a);
}

// One sampler step of a sample, as coefficients:
//   x0  = xs s + xm m                               (s = sample, m = model output)
//   x0c = clip / threshold (x0)
//   out = ox x0c + os s + om m + on z               (z = noise; skipped when on == 0)
// with DDIM's use_clipped_model_output (reclip), where the clip changed x0:
//   out = kox x0c + kos s + on z                    (eps = (s - sqrt(a) x0c) / sqrt(1 - a))
// Where it did not (no clip, or strictly inside a scalar range) that eps is the model's
// own, and the first form computes it without the x0c form's cancellation: s - sqrt(a) x0c
// cancels 1/sqrt(1 - a)-fold (100x at a = 0.9999; the fuzz run found gradients 7.5e-5 off
// in float32, PyTorch's 3.2e-5). The threshold divides x0 by a threshold that has a
// gradient of its own: it always takes the x0c form.
template <typename T>
struct Step {
  T xs, xm, ox, os, om, on, kox, kos;
  bool reclip;
};

struct StepParams {
  int64_t kind, prediction;
  double eta, final_alpha;
  bool use_clipped;
};

// a = table[t], ap = table[prev] (prev < 0: 1 for DDPM, final_alpha for DDIM); t decides
// DDPM's noise (none at t <= 0), per sample.
template <typename T>
C10_HOST_DEVICE inline Step<T> step_coefs(const StepParams& p, T a, T ap, int64_t t) {
  const T one(1), sa = pk_sqrt(a), sb = pk_sqrt(one - a);
  Step<T> c;
  const Mix<T> x = mix_coefs<T>(kX0Epsilon + p.prediction, a);
  c.xs = x.cx;
  c.xm = x.cy;
  c.om = T(0);
  c.reclip = false;
  if (p.kind == kDDPM) {
    const T beta_t = (ap - a) / ap;  // = 1 - a/ap without cancellation (ap - a is exact)
    c.ox = pk_sqrt(ap) * beta_t / (one - a);
    c.os = pk_sqrt(a / ap) * (one - ap) / (one - a);
    T var = (one - ap) / (one - a) * beta_t;
    var = var > T(1e-20) ? var : T(1e-20);
    c.on = t > 0 ? pk_sqrt(var) : T(0);
    c.kox = c.ox;
    c.kos = c.os;
    return c;
  }
  // var < 0 when ap < a (a step towards more noise, or final_alpha < a): eta = 0 needs no
  // sd (0 * sqrt(var) would be NaN and, clamped away below, drop the direction term);
  // eta > 0 has no real sd there and gives NaN, as the reference does.
  const T var = (one - ap) / (one - a) * ((ap - a) / ap);
  const T sd = p.eta > 0 ? T(p.eta) * pk_sqrt(var) : T(0);
  // dir^2 = 1 - ap - sd^2, in closed form: (1 - ap) ((1 - eta^2) + eta^2 (a / ap)
  // (1 - ap) / (1 - a)). The difference cancels where sd^2 is close to 1 - ap (eta = 1
  // from a noisy t: 1e3-fold at a = 4e-5, ap = 0.04, where the fuzz run found gradients
  // 1.3e-4 off in float32); the closed form is a sum of two terms >= 0 for eta <= 1 (and
  // exactly 1 - ap at eta = 0). A NaN sd (eta > 0 towards more noise) stays NaN.
  const T e2 = T(p.eta) * T(p.eta);
  const T noisy = e2 > T(0) ? e2 * (a / ap) * ((one - ap) / (one - a)) : T(0);  // eta = 0: no 0 * inf at ap = 0
  T dir2 = (one - ap) * ((one - e2) + noisy);
  dir2 = sd != sd ? sd : dir2;
  const T dir = pk_sqrt(dir2 < T(0) ? T(0) : dir2);  // NaN stays NaN
  c.ox = pk_sqrt(ap);
  c.on = sd;
  c.reclip = p.use_clipped;  // eps = (s - sqrt(a) x0c) / sqrt(1 - a) where the clip changed x0
  c.kox = c.ox - dir * sa / sb;
  c.kos = dir / sb;
  if (p.prediction == kEpsilon) {  // eps = m
    c.os = T(0);
    c.om = dir;
  } else if (p.prediction == kSample) {  // eps = (s - sqrt(a) m) / sqrt(1 - a)
    c.os = dir / sb;
    c.om = -dir * sa / sb;
  } else {  // eps = sqrt(a) m + sqrt(1 - a) s
    c.os = dir * sb;
    c.om = dir * sa;
  }
  return c;
}

template <typename T, typename I>
C10_HOST_DEVICE inline Step<T> step_coefs_at(const StepParams& p, const T* table, int64_t len,
                                             I t, I prev) {
  const T a = alpha_at(table, len, t);
  const T ap = static_cast<int64_t>(prev) >= 0
                   ? alpha_at(table, len, prev)
                   : (p.kind == kDDPM ? T(1) : T(p.final_alpha));
  return step_coefs<T>(p, a, ap, static_cast<int64_t>(t));
}

// x0 -> x0c. lim: the clip range, or the per-sample threshold s (x0c = clamp(x0, -s, s) / s).
template <typename T>
C10_HOST_DEVICE inline T clip_x0(int64_t mode, T x0, T lim) {
  if (mode == kNoClip) return x0;
  const T c = x0 < -lim ? -lim : (x0 > lim ? lim : x0);
  return mode == kThreshold ? c / lim : c;
}

// Whether an element takes Step's first form: always without use_clipped (reclip); with
// it, where the clip left x0 as it was (no clip, or strictly inside a scalar range).
// kReclip: k.reclip when known at compile time (0 or 1; the CPU loops are instantiated for
// each, which keeps them vectorised), or -1 to read it.
template <typename T, int kReclip = -1>
C10_HOST_DEVICE inline bool own_eps(const Step<T>& k, int64_t mode, T lim, T x0) {
  const bool reclip = kReclip < 0 ? k.reclip : kReclip == 1;
  return !reclip || mode == kNoClip || (mode == kClip && x0 > -lim && x0 < lim);
}

// One element of a step: returns out (without noise) and writes x0c.
template <typename T, int kReclip = -1>
C10_HOST_DEVICE inline T step_element(const Step<T>& k, int64_t mode, T lim, T s, T m, T& x0c) {
  const T x0 = k.xs * s + k.xm * m;
  x0c = clip_x0<T>(mode, x0, lim);
  // A term whose coefficient is 0 is absent from the formula (e.g. DDPM's mean has no
  // model_output term besides x0): its input is replaced by 0, so an inf there, clipped
  // away in x0, does not come back as 0 * inf = nan. Both forms are computed and one is
  // selected: selects, not branches, keep the CPU loops vectorised.
  const T s_used = k.os != T(0) ? s : T(0);
  const T m_used = k.om != T(0) ? m : T(0);
  const T r = k.ox * x0c + k.os * s_used + k.om * m_used;
  const T r_x0c = k.kox * x0c + k.kos * (k.kos != T(0) ? s : T(0));
  return own_eps<T, kReclip>(k, mode, lim, x0) ? r : r_x0c;
}

// Gradients of one element of a step, given gp (grad of prev_sample) and gx (grad of
// pred_original_sample). torch.clamp's conventions: a scalar bound (clip) passes the
// gradient strictly inside; a tensor bound (the threshold) splits it half-half at a tie.
// Writes grad_m, grad_s and returns this element's term of grad_threshold * lim:
//   gc (dc/dq - x0c), dc/dq = 1 above q, 1/2 at q, -1 below -q, -1/2 at -q.
template <typename T, int kReclip = -1>
C10_HOST_DEVICE inline T step_grad_element(const Step<T>& k, int64_t mode, T lim, T s, T m, T gp,
                                           T gx, T& gm, T& gs) {
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

// ------------------------------------------------------------------ argument checks
inline void check_table(const char* op, const at::Tensor& table, const at::Tensor& like) {
  TORCH_CHECK_TYPE(table.scalar_type() == at::kFloat || table.scalar_type() == at::kDouble, op,
                   ": argument 'alphas_cumprod' must be float32 (or float64), got ",
                   table.scalar_type());
  TORCH_CHECK_VALUE(table.dim() == 1 && table.size(0) > 0, op,
                    ": argument 'alphas_cumprod' must be a non-empty 1-D table [T], got shape ",
                    table.sizes());
  check_same_device(op, "alphas_cumprod", table, "sample", like);
}

inline void check_timesteps(const char* op, const char* arg, const at::Tensor& t,
                            const at::Tensor& like) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kLong || t.scalar_type() == at::kInt, op,
                   ": argument '", arg, "' must be an int64 or int32 tensor, got ",
                   t.scalar_type());
  check_same_device(op, arg, t, "sample", like);
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == like.size(0), op, ": argument '", arg,
                    "' must have shape [N] = [", like.size(0), "] (one per sample), got ",
                    t.sizes());
}

// Range of timesteps on CPU: [lo, T - 1] (lo = 0, or INT64_MIN for prev timesteps,
// whose negatives mean "final"). On CUDA this would need a host sync: see alpha_at.
inline void check_timestep_range(const char* op, const char* arg, const at::Tensor& t,
                                 int64_t len, bool allow_negative) {
  if (!t.is_cpu()) return;
  const auto t64 = t.to(at::kLong).contiguous();
  const int64_t* p = t64.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < t64.numel(); ++i) {
    TORCH_CHECK_INDEX((allow_negative || p[i] >= 0) && p[i] < len, op, ": argument '", arg,
                      "' has ", p[i], " at index ", i, ", outside [", allow_negative ? "-inf" : "0",
                      ", ", len - 1, "] (alphas_cumprod has ", len, " entries)");
  }
}

// x: a float tensor with at least one dim on `dev`; others listed must match it.
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

inline int64_t check_choice(const char* op, const char* arg, int64_t v, int64_t n) {
  TORCH_CHECK_VALUE(v >= 0 && v < n, op, ": argument '", arg, "' must be in [0, ", n - 1,
                    "], got ", v);
  return v;
}


// ------------------------------------------------------------------ per-op checks
inline void check_mix(const char* op, const at::Tensor& x, const at::Tensor& y,
                      const at::Tensor& t, const at::Tensor& table, int64_t kind,
                      at::DeviceType dev) {
  check_samples(op, "x", x, dev);
  check_like(op, "y", y, "x", x);
  check_choice(op, "kind", kind, 5);
  check_table(op, table, x);
  check_timesteps(op, "timesteps", t, x);
  check_timestep_range(op, "timesteps", t, table.size(0), false);
}

inline void check_loss(const char* op, const at::Tensor& m, const at::Tensor& x0,
                       const at::Tensor& noise, const at::Tensor& t, const at::Tensor& table,
                       int64_t prediction, at::DeviceType dev) {
  check_samples(op, "model_output", m, dev);
  check_like(op, "x0", x0, "model_output", m);
  check_like(op, "noise", noise, "model_output", m);
  check_choice(op, "prediction", prediction, 3);
  check_table(op, table, m);
  check_timesteps(op, "timesteps", t, m);
  check_timestep_range(op, "timesteps", t, table.size(0), false);
}

inline void check_step(const char* op, const at::Tensor& m, const at::Tensor& s,
                       const c10::optional<at::Tensor>& noise, const at::Tensor& t,
                       const at::Tensor& prev, const at::Tensor& table,
                       const c10::optional<at::Tensor>& threshold, int64_t kind,
                       int64_t prediction, double clip_range, double eta, double final_alpha,
                       at::DeviceType dev) {
  check_samples(op, "sample", s, dev);
  check_like(op, "model_output", m, "sample", s);
  if (noise.has_value()) check_like(op, "noise", *noise, "sample", s);
  check_choice(op, "kind", kind, 2);
  check_choice(op, "prediction", prediction, 3);
  TORCH_CHECK_VALUE(clip_range > 0, op, ": argument 'clip_sample_range' must be > 0, got ",
                    clip_range);
  TORCH_CHECK_VALUE(eta >= 0, op, ": argument 'eta' must be >= 0, got ", eta);
  TORCH_CHECK_VALUE(final_alpha > 0 && final_alpha <= 1, op,
                    ": argument 'final_alpha_cumprod' must be in (0, 1], got ", final_alpha);
  check_table(op, table, s);
  check_timesteps(op, "timesteps", t, s);
  check_timesteps(op, "prev_timesteps", prev, s);
  check_timestep_range(op, "timesteps", t, table.size(0), false);
  check_timestep_range(op, "prev_timesteps", prev, table.size(0), true);
  if (threshold.has_value()) {
    const auto& q = *threshold;
    TORCH_CHECK_TYPE(q.scalar_type() == (s.scalar_type() == at::kDouble ? at::kDouble : at::kFloat),
                     op, ": argument 'threshold' must be in the accumulation dtype (float32, float64 "
                     "for float64 samples), got ", q.scalar_type());
    check_same_device(op, "threshold", q, "sample", s);
    TORCH_CHECK_VALUE(q.dim() == 1 && q.size(0) == s.size(0), op,
                      ": argument 'threshold' must have shape [N] = [", s.size(0), "], got ",
                      q.sizes());
  }
}

// [N] per-sample values (timesteps, thresholds) as contiguous tensors; the table in the
// accumulation dtype.
// The three gradients of diffusion_loss_backward: like model_output where output_mask asks
// for one, an empty tensor otherwise (inputs that do not require grad, usually x0 and noise).
inline std::array<at::Tensor, 3> loss_grads(const at::Tensor& m, std::array<bool, 3> mask) {
  std::array<at::Tensor, 3> g;
  for (int i = 0; i < 3; ++i) g[i] = mask[i] ? at::empty(m.sizes(), m.options()) : at::empty({0}, m.options());
  return g;
}

inline at::Tensor table_as(const at::Tensor& table, at::ScalarType acc) {
  return table.to(acc).contiguous();
}

}  // namespace diffusion
}  // namespace pykernels
