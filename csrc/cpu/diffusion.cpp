// CPU kernels of the diffusion family (pykernels/reference/diffusion.py has the math,
// common/diffusion_args.h the per-sample coefficients and the three kernels they feed):
//   blend         add_noise, get_velocity        out = cx x + cy y
//   target_error  diffusion_loss                 (m - target)^2, target = tx x0 + tn noise
//   sampler_step  ddpm_step, ddim_step           x0, its clip, out = ox x0c + os s + om m + on z
//
// Tensors are [N, D] (N samples). Work is split into chunks of kChunk elements of one
// sample (at::parallel_for over N x chunks); a chunk computes its sample's coefficients
// once, then streams its elements in the accumulation type with plain loops that the
// compiler vectorises, for SSE2 and AVX2 (common/cpu_loops.h). Per-sample sums (the loss,
// the threshold's gradient) are summed per chunk and the chunks added in order, so results
// do not depend on the thread count.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "common/cpu_loops.h"
#include "common/diffusion_args.h"
#include "common/output_memory.h"
#include "common/dispatch.h"

namespace pykernels {
namespace cpu {
namespace {

using namespace pykernels::diffusion;

constexpr int64_t kChunk = 16384;

inline int64_t chunks_per_sample(int64_t D) {
  return std::max<int64_t>(1, (D + kChunk - 1) / kChunk);
}

// N samples of D elements each.
struct Flat {
  int64_t N, D;
  explicit Flat(const at::Tensor& x)
      : N(x.size(0)), D(x.size(0) == 0 ? 0 : x.numel() / x.size(0)) {}
};

// f(n, chunk, begin, end) for every chunk [begin, end) of every sample n.
template <typename F>
inline void for_each_chunk(const Flat& fl, F&& f) {
  const int64_t C = chunks_per_sample(fl.D);
  at::parallel_for(0, fl.N * C, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const int64_t n = i / C, c = i % C;
      f(n, c, c * kChunk, std::min(fl.D, (c + 1) * kChunk));
    }
  });
}

// The sum of [N, C] chunk partials in order, in double (a handful of numbers per sample).
template <typename acc>
inline double sum_partials(const std::vector<acc>& partial) {
  double s = 0;
  for (const acc v : partial) s += static_cast<double>(v);
  return s;
}

// ------------------------------------------------------------------------------ target_error
// d = m - (tx x0 + tn noise) of one element.
template <typename acc, typename scalar_t>
PK_CPU_INLINE acc target_diff(const Coefs<acc>& k, scalar_t m, scalar_t x0, scalar_t z) {
  return static_cast<acc>(m) - (k.cx * static_cast<acc>(x0) + k.cy * static_cast<acc>(z));
}

// ------------------------------------------------------------------------------ sampler_step
// One chunk of a step: out = step(s, m) (+ on z), x0 = the clipped x0. The clip mode, the
// reclip form and the noise term are template arguments, so that the loop has no branches
// and vectorises (a run-time mode check per element kept it scalar, 3x slower).
template <int64_t kMode, int kReclip, bool kNoisy, typename scalar_t, typename acc>
PK_CPU_INLINE void step_span(const Step<acc>& k, acc lim, const scalar_t* __restrict__ s,
                             const scalar_t* __restrict__ m, const scalar_t* __restrict__ z,
                             scalar_t* __restrict__ out, scalar_t* __restrict__ x0, int64_t len) {
  for (int64_t i = 0; i < len; ++i) {
    acc c;
    acc r = step_element<acc, kReclip>(k, kMode, lim, static_cast<acc>(s[i]),
                                       static_cast<acc>(m[i]), c);
    if constexpr (kNoisy) r += k.on * static_cast<acc>(z[i]);
    out[i] = static_cast<scalar_t>(r);
    x0[i] = static_cast<scalar_t>(c);
  }
}

// step_span for a run-time clip mode; use_clipped_model_output only changes the clipped
// modes' loops (reclip: see Step).
template <bool kNoisy, typename scalar_t, typename acc>
PK_CPU_INLINE void step_span(int64_t mode, const Step<acc>& k, acc lim, const scalar_t* s,
                             const scalar_t* m, const scalar_t* z, scalar_t* out, scalar_t* x0,
                             int64_t len) {
  switch (mode) {
    case kNoClip:
      return step_span<kNoClip, 0, kNoisy>(k, lim, s, m, z, out, x0, len);
    case kClip:
      return k.reclip ? step_span<kClip, 1, kNoisy>(k, lim, s, m, z, out, x0, len)
                      : step_span<kClip, 0, kNoisy>(k, lim, s, m, z, out, x0, len);
    default:
      return k.reclip ? step_span<kThreshold, 1, kNoisy>(k, lim, s, m, z, out, x0, len)
                      : step_span<kThreshold, 0, kNoisy>(k, lim, s, m, z, out, x0, len);
  }
}

// One chunk of a step's backward: grad_m and grad_s; returns the chunk's sum of the
// threshold's gradient terms. Templated like step_span, for the same reason.
template <int64_t kMode, int kReclip, typename scalar_t, typename acc>
PK_CPU_INLINE acc step_grad_span(const Step<acc>& k, acc lim, const scalar_t* __restrict__ s,
                                 const scalar_t* __restrict__ m, const scalar_t* __restrict__ gp,
                                 const scalar_t* __restrict__ gx, scalar_t* __restrict__ gm,
                                 scalar_t* __restrict__ gs, int64_t len) {
  acc sq = 0;
  for (int64_t i = 0; i < len; ++i) {
    acc g_m, g_s;
    sq += step_grad_element<acc, kReclip>(k, kMode, lim, static_cast<acc>(s[i]),
                                          static_cast<acc>(m[i]), static_cast<acc>(gp[i]),
                                          static_cast<acc>(gx[i]), g_m, g_s);
    gm[i] = static_cast<scalar_t>(g_m);
    gs[i] = static_cast<scalar_t>(g_s);
  }
  return sq;
}

template <typename scalar_t, typename acc>
PK_CPU_INLINE acc step_grad_span(int64_t mode, const Step<acc>& k, acc lim, const scalar_t* s,
                                 const scalar_t* m, const scalar_t* gp, const scalar_t* gx,
                                 scalar_t* gm, scalar_t* gs, int64_t len) {
  switch (mode) {
    case kNoClip:
      return step_grad_span<kNoClip, 0>(k, lim, s, m, gp, gx, gm, gs, len);
    case kClip:
      return k.reclip ? step_grad_span<kClip, 1>(k, lim, s, m, gp, gx, gm, gs, len)
                      : step_grad_span<kClip, 0>(k, lim, s, m, gp, gx, gm, gs, len);
    default:
      return k.reclip ? step_grad_span<kThreshold, 1>(k, lim, s, m, gp, gx, gm, gs, len)
                      : step_grad_span<kThreshold, 0>(k, lim, s, m, gp, gx, gm, gs, len);
  }
}

// The kernels that the ops' wrappers (common/diffusion_args.h's Ops) call on CPU tensors.
struct Kernels {
  static constexpr at::DeviceType kDevice = at::kCPU;

  // ---------------------------------------------------------------------------- blend
  // out[n, i] = cx x[n, i] + cy y[n, i], (cx, cy) = coefs(alphas_cumprod[t[n]]), x's dtype.
  template <typename CoefFn>
  static at::Tensor blend(const char*, const at::Tensor& x_, const at::Tensor& y_,
                          const at::Tensor& t, const at::Tensor& table, CoefFn coefs) {
    const auto x = x_.contiguous(), y = y_.contiguous();
    auto out = empty_output(x.sizes(), x.options());
    const Flat fl(x);
    PK_DISPATCH_FLOATING(x.scalar_type(), "blend_cpu", [&] {
      using acc = acc_t<scalar_t>;
      const Schedule<acc> sched(table, t);
      const scalar_t *px = x.const_data_ptr<scalar_t>(), *py = y.const_data_ptr<scalar_t>();
      scalar_t* po = out.data_ptr<scalar_t>();
      for_each_chunk(fl, [&](int64_t n, int64_t, int64_t b, int64_t e) {
        const Coefs<acc> k = coefs(sched.alpha(n));
        const int64_t o = n * fl.D;
        run_vectorised([&]() __attribute__((always_inline)) {
          for (int64_t i = o + b; i < o + e; ++i)
            po[i] = static_cast<scalar_t>(k.cx * static_cast<acc>(px[i]) +
                                          k.cy * static_cast<acc>(py[i]));
        });
      });
    });
    return out;
  }

  // (grad_x, grad_y) = (cx grad, cy grad), in grad's dtype.
  template <typename CoefFn>
  static std::tuple<at::Tensor, at::Tensor> blend_backward(const char*, const at::Tensor& grad_,
                                                           const at::Tensor& t,
                                                           const at::Tensor& table, CoefFn coefs) {
    const auto grad = grad_.contiguous();
    auto gx = empty_output(grad.sizes(), grad.options()),
         gy = empty_output(grad.sizes(), grad.options());
    const Flat fl(grad);
    PK_DISPATCH_FLOATING(grad.scalar_type(), "blend_backward_cpu", [&] {
      using acc = acc_t<scalar_t>;
      const Schedule<acc> sched(table, t);
      const scalar_t* pg = grad.const_data_ptr<scalar_t>();
      scalar_t *ox = gx.data_ptr<scalar_t>(), *oy = gy.data_ptr<scalar_t>();
      for_each_chunk(fl, [&](int64_t n, int64_t, int64_t b, int64_t e) {
        const Coefs<acc> k = coefs(sched.alpha(n));
        const int64_t o = n * fl.D;
        run_vectorised([&]() __attribute__((always_inline)) {
          for (int64_t i = o + b; i < o + e; ++i) {
            ox[i] = static_cast<scalar_t>(k.cx * static_cast<acc>(pg[i]));
            oy[i] = static_cast<scalar_t>(k.cy * static_cast<acc>(pg[i]));
          }
        });
      });
    });
    return {gx, gy};
  }

  // ---------------------------------------------------------------------------- target_error
  // d^2 per element (elementwise, accumulation dtype), else sum(d^2) / count (a scalar: the
  // per-chunk sums added in order).
  static at::Tensor target_error(const char*, const at::Tensor& m_, const at::Tensor& x0_,
                                 const at::Tensor& noise_, const at::Tensor& timesteps,
                                 const at::Tensor& alphas_cumprod, int64_t prediction,
                                 bool elementwise, double count) {
    const auto m = m_.contiguous(), x0 = x0_.contiguous(), nz = noise_.contiguous();
    const auto accT = at::toOpMathType(m.scalar_type());
    auto out = at::empty(elementwise ? m.sizes() : at::IntArrayRef(), m.options().dtype(accT));
    const Flat fl(m);
    PK_DISPATCH_FLOATING(m.scalar_type(), "diffusion_loss_cpu", [&] {
      using acc = acc_t<scalar_t>;
      const Schedule<acc> sched(alphas_cumprod, timesteps);
      const int64_t C = chunks_per_sample(fl.D);
      std::vector<acc> partial(fl.N * C, acc(0));
      const scalar_t *pm = m.const_data_ptr<scalar_t>(), *px = x0.const_data_ptr<scalar_t>(),
                     *pn = nz.const_data_ptr<scalar_t>();
      acc* po = elementwise ? out.data_ptr<acc>() : nullptr;
      for_each_chunk(fl, [&](int64_t n, int64_t c, int64_t b, int64_t e) {
        const Coefs<acc> k = diffusion_loss_coefs(prediction, sched.alpha(n));
        const int64_t o = n * fl.D + b;
        run_vectorised([&]() __attribute__((always_inline)) {
          auto sq = [&](int64_t i) {
            const acc d = target_diff(k, pm[o + i], px[o + i], pn[o + i]);
            return d * d;
          };
          if (po != nullptr)
            for (int64_t i = 0; i < e - b; ++i) po[o + i] = sq(i);
          partial[n * C + c] = lane_sum<acc>(e - b, sq);
        });
      });
      if (!elementwise) out.fill_(static_cast<acc>(sum_partials(partial) / count));
    });
    return out;
  }

  // With d = m - target and g the gradient of d^2 (per element; or the scalar's over
  // count): grad_m = 2 g d, grad_x0 = -2 g d tx, grad_noise = -2 g d tn. Only the gradients
  // output_mask asks for are computed (usually model_output's alone).
  static std::tuple<at::Tensor, at::Tensor, at::Tensor> target_error_backward(
      const char*, const at::Tensor& grad_, const at::Tensor& m_, const at::Tensor& x0_,
      const at::Tensor& noise_, const at::Tensor& timesteps, const at::Tensor& alphas_cumprod,
      int64_t prediction, bool elementwise, double count, std::array<bool, 3> output_mask) {
    const auto m = m_.contiguous(), x0 = x0_.contiguous(), nz = noise_.contiguous();
    const auto grads = loss_grads(m, output_mask);
    const Flat fl(m);
    PK_DISPATCH_FLOATING(m.scalar_type(), "diffusion_loss_backward_cpu", [&] {
      using acc = acc_t<scalar_t>;
      const Schedule<acc> sched(alphas_cumprod, timesteps);
      const auto g = grad_.to(c10::CppTypeToScalarType<acc>::value).contiguous();
      const acc* pg = elementwise ? g.const_data_ptr<acc>() : nullptr;
      const acc g0 = elementwise ? acc(0) : static_cast<acc>(g.item<double>() / count);
      const scalar_t *pm = m.const_data_ptr<scalar_t>(), *px = x0.const_data_ptr<scalar_t>(),
                     *pn = nz.const_data_ptr<scalar_t>();
      scalar_t *om = output_mask[0] ? grads[0].data_ptr<scalar_t>() : nullptr,
               *ox = output_mask[1] ? grads[1].data_ptr<scalar_t>() : nullptr,
               *on = output_mask[2] ? grads[2].data_ptr<scalar_t>() : nullptr;
      const bool only_m = om != nullptr && ox == nullptr && on == nullptr;  // the usual case
      for_each_chunk(fl, [&](int64_t n, int64_t, int64_t b, int64_t e) {
        const Coefs<acc> k = diffusion_loss_coefs(prediction, sched.alpha(n));
        run_vectorised([&]() __attribute__((always_inline)) {
          auto h = [&](int64_t i) {
            return acc(2) * (pg != nullptr ? pg[i] : g0) * target_diff(k, pm[i], px[i], pn[i]);
          };
          if (only_m) {  // a loop without per-element branches, so that it vectorises
            for (int64_t i = n * fl.D + b; i < n * fl.D + e; ++i)
              om[i] = static_cast<scalar_t>(h(i));
            return;
          }
          for (int64_t i = n * fl.D + b; i < n * fl.D + e; ++i) {
            const acc hi = h(i);
            if (om != nullptr) om[i] = static_cast<scalar_t>(hi);
            if (ox != nullptr) ox[i] = static_cast<scalar_t>(-k.cx * hi);
            if (on != nullptr) on[i] = static_cast<scalar_t>(-k.cy * hi);
          }
        });
      });
    });
    return {grads[0], grads[1], grads[2]};
  }

  // ---------------------------------------------------------------------------- sampler_step
  // (prev_sample, pred_original_sample) of a DDPM or DDIM step (p.ddim), sample's dtype.
  static std::tuple<at::Tensor, at::Tensor> sampler_step(
      const char*, const at::Tensor& m_, const at::Tensor& t_, const at::Tensor& prev_,
      const at::Tensor& s_, const at::Tensor& table, const c10::optional<at::Tensor>& noise,
      const c10::optional<at::Tensor>& threshold, const StepParams& p) {
    const auto m = m_.contiguous(), s = s_.contiguous(), prev = prev_.to(at::kLong).contiguous();
    const auto nz = noise.has_value() ? noise->contiguous() : at::Tensor();
    const auto q = threshold.has_value() ? threshold->contiguous() : at::Tensor();
    auto out = empty_output(s.sizes(), s.options()), x0c = empty_output(s.sizes(), s.options());
    const Flat fl(s);
    PK_DISPATCH_FLOATING(s.scalar_type(), "sampler_step_cpu", [&] {
      using acc = acc_t<scalar_t>;
      const Schedule<acc> sched(table, t_);
      const scalar_t *pm = m.const_data_ptr<scalar_t>(), *ps = s.const_data_ptr<scalar_t>();
      const scalar_t* pn = nz.defined() ? nz.const_data_ptr<scalar_t>() : nullptr;
      const acc* pq = q.defined() ? q.const_data_ptr<acc>() : nullptr;
      const int64_t* pp = prev.const_data_ptr<int64_t>();
      scalar_t *po = out.data_ptr<scalar_t>(), *px = x0c.data_ptr<scalar_t>();
      for_each_chunk(fl, [&](int64_t n, int64_t, int64_t b, int64_t e) {
        const auto k = step_coefs_at<acc>(p, sched.table.const_data_ptr<acc>(), sched.table.numel(),
                                          sched.t.const_data_ptr<int64_t>()[n], pp[n]);
        const acc lim = pq != nullptr ? pq[n] : acc(p.clip_range);
        // DDPM at t = 0 and DDIM at eta = 0 do not read the noise
        const bool noisy = pn != nullptr && k.on != acc(0);
        const int64_t o = n * fl.D + b;
        run_vectorised([&]() __attribute__((always_inline)) {
          if (noisy)
            step_span<true>(p.clip_mode, k, lim, ps + o, pm + o, pn + o, po + o, px + o, e - b);
          else
            step_span<false>(p.clip_mode, k, lim, ps + o, pm + o, pn, po + o, px + o, e - b);
        });
      });
    });
    return {out, x0c};
  }

  // (grad_model_output, grad_sample, grad_threshold: [N] per-sample sums, or [0] without a
  // threshold) of a step; see step_grad_element.
  static std::tuple<at::Tensor, at::Tensor, at::Tensor> sampler_step_backward(
      const char*, const at::Tensor& gp_, const at::Tensor& gx_, const at::Tensor& m_,
      const at::Tensor& t_, const at::Tensor& prev_, const at::Tensor& s_, const at::Tensor& table,
      const c10::optional<at::Tensor>& threshold, const StepParams& p) {
    const auto m = m_.contiguous(), s = s_.contiguous();
    const auto gp = gp_.contiguous(), gx = gx_.contiguous();
    const auto prev = prev_.to(at::kLong).contiguous();
    const auto q = threshold.has_value() ? threshold->contiguous() : at::Tensor();
    auto gm = empty_output(s.sizes(), s.options()), gs = empty_output(s.sizes(), s.options());
    at::Tensor gq;
    const Flat fl(s);
    PK_DISPATCH_FLOATING(s.scalar_type(), "sampler_step_backward_cpu", [&] {
      using acc = acc_t<scalar_t>;
      const Schedule<acc> sched(table, t_);
      const int64_t C = chunks_per_sample(fl.D);
      std::vector<acc> partial(q.defined() ? fl.N * C : 0, acc(0));
      const scalar_t *pm = m.const_data_ptr<scalar_t>(), *ps = s.const_data_ptr<scalar_t>();
      const scalar_t *pgp = gp.const_data_ptr<scalar_t>(), *pgx = gx.const_data_ptr<scalar_t>();
      const acc* pq = q.defined() ? q.const_data_ptr<acc>() : nullptr;
      const int64_t* pp = prev.const_data_ptr<int64_t>();
      scalar_t *om = gm.data_ptr<scalar_t>(), *os = gs.data_ptr<scalar_t>();
      for_each_chunk(fl, [&](int64_t n, int64_t c, int64_t b, int64_t e) {
        const auto k = step_coefs_at<acc>(p, sched.table.const_data_ptr<acc>(), sched.table.numel(),
                                          sched.t.const_data_ptr<int64_t>()[n], pp[n]);
        const acc lim = pq != nullptr ? pq[n] : acc(p.clip_range);
        const int64_t o = n * fl.D + b;
        run_vectorised([&]() __attribute__((always_inline)) {
          const acc sq = step_grad_span(p.clip_mode, k, lim, ps + o, pm + o, pgp + o, pgx + o,
                                        om + o, os + o, e - b);
          if (pq != nullptr) partial[n * C + c] = sq / lim;
        });
      });
      gq = at::empty({q.defined() ? fl.N : 0},
                     s.options().dtype(c10::CppTypeToScalarType<acc>::value));
      acc* pgq = gq.data_ptr<acc>();
      for (int64_t n = 0; n < gq.numel(); ++n) {  // chunk sums in order
        acc sum = 0;
        for (int64_t c = 0; c < C; ++c) sum += partial[n * C + c];
        pgq[n] = sum;
      }
    });
    return {gm, gs, gq};
  }
};

}  // namespace
}  // namespace cpu
}  // namespace pykernels

TORCH_LIBRARY_IMPL(pykernels, CPU, m) {
  pykernels::diffusion::register_ops<pykernels::cpu::Kernels>(m);
}
