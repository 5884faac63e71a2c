// CPU kernels of the diffusion family: add_noise / velocity / predicted x0 ("mix"), the
// training loss, and the DDPM / DDIM sampler steps, each one pass over the elements.
//
// Tensors are [N, D] (N samples). Work is split into fixed chunks of kChunk elements of
// one sample (at::parallel_for over N x chunks); a chunk computes its sample's
// coefficients once from the table, then streams the elements in the accumulation type
// with plain loops that the compiler vectorises. (Not at::vec: this extension is built
// with portable flags, without AVX2/FMA, where at::vec falls back to its generic
// emulation, which measured 2x slower here than the auto-vectorised loop.) The
// per-element math is shared with the CUDA kernels (common/diffusion_args.h). Per-sample sums (loss, threshold gradient) are summed per chunk and the chunks
// added in order, so results do not depend on the thread count.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "common/dispatch.h"
#include "common/diffusion_args.h"

namespace pykernels {
namespace cpu {
namespace {

using namespace pykernels::diffusion;

constexpr int64_t kChunk = 16384;

inline int64_t chunks_per_sample(int64_t D) { return std::max<int64_t>(1, (D + kChunk - 1) / kChunk); }

// f(n, chunk, begin, end) for every chunk [begin, end) of every sample n.
template <typename F>
inline void for_each_chunk(int64_t N, int64_t D, F&& f) {
  const int64_t C = chunks_per_sample(D);
  at::parallel_for(0, N * C, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const int64_t n = i / C, c = i % C;
      f(n, c, c * kChunk, std::min(D, (c + 1) * kChunk));
    }
  });
}

struct Flat {
  int64_t N, D;
};
inline Flat flat(const at::Tensor& x) {
  const int64_t N = x.size(0);
  return {N, N == 0 ? 0 : x.numel() / N};
}

// Sum of f(i) over [0, len) in kLanes interleaved partial sums, added in a fixed order:
// the compiler vectorises it (a single running float sum must stay scalar without
// -ffast-math), and the result does not depend on the thread count.
template <typename acc, typename F>
inline acc lane_sum(int64_t len, F&& f) {
  constexpr int kLanes = 16;
  acc part[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= len; i += kLanes)
    for (int j = 0; j < kLanes; ++j) part[j] += f(i + j);
  acc sum = 0;
  for (; i < len; ++i) sum += f(i);
  for (int j = 0; j < kLanes; ++j) sum += part[j];
  return sum;
}

// Sums [N, C] chunk partials in chunk order -> [N].
inline at::Tensor sum_chunks(const at::Tensor& partial) { return partial.sum(1); }

// ------------------------------------------------------------------------------ mix
at::Tensor mix_cpu(const at::Tensor& x_, const at::Tensor& y_, const at::Tensor& t_,
                   const at::Tensor& table_, int64_t kind) {
  const char* op = "pykernels::diffusion_mix";
  check_mix(op, x_, y_, t_, table_, kind, at::kCPU);
  const auto x = x_.contiguous(), y = y_.contiguous(), t = t_.to(at::kLong).contiguous();
  const bool acc_out = kind >= kX0Epsilon;  // predicted x0 comes back in the accumulation dtype
  at::Tensor out;
  PK_DISPATCH_FLOATING(x.scalar_type(), "diffusion_mix_cpu", [&] {
    using acc = acc_t<scalar_t>;
    out = at::empty_like(x, x.options().dtype(acc_out ? c10::CppTypeToScalarType<acc>::value
                                                      : x.scalar_type()));
    const auto table = table_as(table_, c10::CppTypeToScalarType<acc>::value);
    const Flat fl = flat(x);
    const int64_t N = fl.N, D = fl.D;
    const scalar_t *px = x.const_data_ptr<scalar_t>(), *py = y.const_data_ptr<scalar_t>();
    const int64_t* pt = t.const_data_ptr<int64_t>();
    const acc* tab = table.const_data_ptr<acc>();
    const int64_t T = table.numel();
    acc* pacc = acc_out ? out.data_ptr<acc>() : nullptr;
    scalar_t* pout = acc_out ? nullptr : out.data_ptr<scalar_t>();
    for_each_chunk(N, D, [&](int64_t n, int64_t, int64_t b, int64_t e) {
      const auto k = mix_coefs<acc>(kind, alpha_at(tab, T, pt[n]));
      const acc cx = k.cx, cy = k.cy;
      const int64_t o = n * D;
      const scalar_t *xs = px + o, *ys = py + o;
      if (pacc != nullptr) {
        acc* q = pacc + o;
        for (int64_t i = b; i < e; ++i) q[i] = cx * static_cast<acc>(xs[i]) + cy * static_cast<acc>(ys[i]);
      } else {
        scalar_t* q = pout + o;
        for (int64_t i = b; i < e; ++i)
          q[i] = static_cast<scalar_t>(cx * static_cast<acc>(xs[i]) + cy * static_cast<acc>(ys[i]));
      }
    });
  });
  return out;
}

// grad_x = cx g, grad_y = cy g (g in x's dtype, or the accumulation dtype for x0 kinds).
std::tuple<at::Tensor, at::Tensor> mix_backward_cpu(const at::Tensor& grad_, const at::Tensor& x,
                                                    const at::Tensor& t_, const at::Tensor& table_,
                                                    int64_t kind) {
  const char* op = "pykernels::diffusion_mix_backward";
  check_mix(op, x, x, t_, table_, kind, at::kCPU);
  check_float(op, "grad", grad_);
  check_same_device(op, "grad", grad_, "x", x);
  check_same_shape(op, "grad", grad_, "x", x);
  const auto t = t_.to(at::kLong).contiguous();
  auto gx = at::empty_like(x, at::MemoryFormat::Contiguous), gy = at::empty_like(gx);
  PK_DISPATCH_FLOATING(x.scalar_type(), "diffusion_mix_backward_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const auto g = grad_.to(c10::CppTypeToScalarType<acc>::value).contiguous();
    const auto table = table_as(table_, c10::CppTypeToScalarType<acc>::value);
    const Flat fl = flat(x);
    const int64_t N = fl.N, D = fl.D;
    const acc* pg = g.const_data_ptr<acc>();
    const int64_t* pt = t.const_data_ptr<int64_t>();
    const acc* tab = table.const_data_ptr<acc>();
    const int64_t T = table.numel();
    scalar_t *ox = gx.data_ptr<scalar_t>(), *oy = gy.data_ptr<scalar_t>();
    for_each_chunk(N, D, [&](int64_t n, int64_t, int64_t b, int64_t e) {
      const auto k = mix_coefs<acc>(kind, alpha_at(tab, T, pt[n]));
      const int64_t o = n * D;
      for (int64_t i = o + b; i < o + e; ++i) {
        ox[i] = static_cast<scalar_t>(k.cx * pg[i]);
        oy[i] = static_cast<scalar_t>(k.cy * pg[i]);
      }
    });
  });
  return {gx, gy};
}

// ------------------------------------------------------------------------------ loss
// elementwise: (m - target)^2 per element; else per-sample sums [N]; accumulation dtype.
at::Tensor loss_cpu(const at::Tensor& m_, const at::Tensor& x0_, const at::Tensor& noise_,
                    const at::Tensor& t_, const at::Tensor& table_, int64_t prediction,
                    bool elementwise) {
  const char* op = "pykernels::diffusion_loss";
  check_loss(op, m_, x0_, noise_, t_, table_, prediction, at::kCPU);
  const auto m = m_.contiguous(), x0 = x0_.contiguous(), nz = noise_.contiguous();
  const auto t = t_.to(at::kLong).contiguous();
  at::Tensor out;
  PK_DISPATCH_FLOATING(m.scalar_type(), "diffusion_loss_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const auto accT = c10::CppTypeToScalarType<acc>::value;
    const auto table = table_as(table_, accT);
    const Flat fl = flat(m);
    const int64_t N = fl.N, D = fl.D;
    const int64_t C = chunks_per_sample(D);
    auto partial = at::zeros({N, C}, m.options().dtype(accT));
    if (elementwise) out = at::empty(m.sizes(), m.options().dtype(accT));
    const scalar_t *pm = m.const_data_ptr<scalar_t>(), *px = x0.const_data_ptr<scalar_t>(),
                   *pn = nz.const_data_ptr<scalar_t>();
    const int64_t* pt = t.const_data_ptr<int64_t>();
    const acc* tab = table.const_data_ptr<acc>();
    const int64_t T = table.numel();
    acc* pp = partial.data_ptr<acc>();
    acc* po = elementwise ? out.data_ptr<acc>() : nullptr;
    for_each_chunk(N, D, [&](int64_t n, int64_t c, int64_t b, int64_t e) {
      const auto k = target_coefs<acc>(prediction, alpha_at(tab, T, pt[n]));
      const int64_t o = n * D + b;
      const scalar_t *ms = pm + o, *xs = px + o, *ns = pn + o;
      auto sq = [&](int64_t i) {
        const acc d = static_cast<acc>(ms[i]) - (k.cx * static_cast<acc>(xs[i]) + k.cy * static_cast<acc>(ns[i]));
        return d * d;
      };
      if (po != nullptr) {
        acc* q = po + o;
        for (int64_t i = 0; i < e - b; ++i) q[i] = sq(i);
      }
      const acc sum = lane_sum<acc>(e - b, sq);
      pp[n * C + c] = sum;
    });
    if (!elementwise) out = sum_chunks(partial);
  });
  return out;
}

// grad: [N] (per-sample sums) or per element, accumulation dtype.
// d = m - target: grad_m = 2 g d, grad_x0 = -2 g d tx, grad_noise = -2 g d tn.
std::tuple<at::Tensor, at::Tensor, at::Tensor> loss_backward_cpu(
    const at::Tensor& grad_, const at::Tensor& m_, const at::Tensor& x0_, const at::Tensor& noise_,
    const at::Tensor& t_, const at::Tensor& table_, int64_t prediction, bool elementwise,
    std::array<bool, 3> output_mask) {
  const char* op = "pykernels::diffusion_loss_backward";
  check_loss(op, m_, x0_, noise_, t_, table_, prediction, at::kCPU);
  check_float(op, "grad", grad_);
  check_same_device(op, "grad", grad_, "model_output", m_);
  TORCH_CHECK_VALUE(elementwise ? grad_.sizes() == m_.sizes()
                                : (grad_.dim() == 1 && grad_.size(0) == m_.size(0)),
                    op, ": argument 'grad' must have shape ",
                    elementwise ? m_.sizes() : m_.sizes().slice(0, 1), ", got ", grad_.sizes());
  const auto m = m_.contiguous(), x0 = x0_.contiguous(), nz = noise_.contiguous();
  const auto t = t_.to(at::kLong).contiguous();
  const auto grads = loss_grads(m, output_mask);
  const at::Tensor &gm = grads[0], &gx = grads[1], &gn = grads[2];
  PK_DISPATCH_FLOATING(m.scalar_type(), "diffusion_loss_backward_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const auto accT = c10::CppTypeToScalarType<acc>::value;
    const auto g = grad_.to(accT).contiguous();
    const auto table = table_as(table_, accT);
    const Flat fl = flat(m);
    const int64_t N = fl.N, D = fl.D;
    const scalar_t *pm = m.const_data_ptr<scalar_t>(), *px = x0.const_data_ptr<scalar_t>(),
                   *pn = nz.const_data_ptr<scalar_t>();
    const acc* pg = g.const_data_ptr<acc>();
    const int64_t* pt = t.const_data_ptr<int64_t>();
    const acc* tab = table.const_data_ptr<acc>();
    const int64_t T = table.numel();
    scalar_t* om = output_mask[0] ? gm.data_ptr<scalar_t>() : nullptr;
    scalar_t* ox = output_mask[1] ? gx.data_ptr<scalar_t>() : nullptr;
    scalar_t* on = output_mask[2] ? gn.data_ptr<scalar_t>() : nullptr;
    const bool only_m = om != nullptr && ox == nullptr && on == nullptr;  // the usual case
    for_each_chunk(N, D, [&](int64_t n, int64_t, int64_t b, int64_t e) {
      const auto k = target_coefs<acc>(prediction, alpha_at(tab, T, pt[n]));
      const int64_t o = n * D;
      // One loop per case, without a per-element branch in the usual ones (only
      // model_output needs a gradient), so that they vectorise.
      auto span = [&](auto per_element, auto m_only) {
        for (int64_t i = o + b; i < o + e; ++i) {
          const acc gv = per_element ? pg[i] : pg[n];
          const acc d = static_cast<acc>(pm[i]) - (k.cx * static_cast<acc>(px[i]) + k.cy * static_cast<acc>(pn[i]));
          const acc h = acc(2) * gv * d;
          if (m_only) {
            om[i] = static_cast<scalar_t>(h);
          } else {
            if (om) om[i] = static_cast<scalar_t>(h);
            if (ox) ox[i] = static_cast<scalar_t>(-k.cx * h);
            if (on) on[i] = static_cast<scalar_t>(-k.cy * h);
          }
        }
      };
      if (elementwise) {
        only_m ? span(std::true_type{}, std::true_type{}) : span(std::true_type{}, std::false_type{});
      } else {
        only_m ? span(std::false_type{}, std::true_type{}) : span(std::false_type{}, std::false_type{});
      }
    });
  });
  return {gm, gx, gn};
}

// ------------------------------------------------------------------------------ step
struct StepArgs {
  StepParams p;
  int64_t clip_mode;
  double clip_range;
};

StepArgs step_args(int64_t kind, int64_t prediction, bool clip_sample, double clip_range,
                   double eta, bool use_clipped, double final_alpha, bool has_threshold) {
  StepArgs a;
  a.p = {kind, prediction, eta, final_alpha, use_clipped};
  a.clip_mode = has_threshold ? kThreshold : (clip_sample ? kClip : kNoClip);
  a.clip_range = clip_range;
  return a;
}

// One span of a step: out = step(s, m) (+ on * noise), x0 = the clipped x0. The clip mode
// and the noise term are template arguments so that the loop has no branches and the
// compiler vectorises it (a run-time mode check per element kept it scalar, 3x slower).
template <int64_t kMode, int kReclip, bool kNoisy, typename scalar_t, typename acc>
void step_span(const Step<acc>& k, acc lim, const scalar_t* __restrict__ s, const scalar_t* __restrict__ m,
               const scalar_t* __restrict__ z, scalar_t* __restrict__ out, scalar_t* __restrict__ x0,
               int64_t len) {
  for (int64_t i = 0; i < len; ++i) {
    acc c;
    acc r = step_element<acc, kReclip>(k, kMode, lim, static_cast<acc>(s[i]), static_cast<acc>(m[i]), c);
    if constexpr (kNoisy) r += k.on * static_cast<acc>(z[i]);
    out[i] = static_cast<scalar_t>(r);
    x0[i] = static_cast<scalar_t>(c);
  }
}

template <bool kNoisy, typename scalar_t, typename acc>
void step_span(int64_t mode, const Step<acc>& k, acc lim, const scalar_t* s, const scalar_t* m,
               const scalar_t* z, scalar_t* out, scalar_t* x0, int64_t len) {
  // use_clipped_model_output only changes the clipped modes' loops (reclip: see Step)
  switch (mode) {
    case kNoClip: return step_span<kNoClip, 0, kNoisy>(k, lim, s, m, z, out, x0, len);
    case kClip:
      return k.reclip ? step_span<kClip, 1, kNoisy>(k, lim, s, m, z, out, x0, len)
                      : step_span<kClip, 0, kNoisy>(k, lim, s, m, z, out, x0, len);
    default:
      return k.reclip ? step_span<kThreshold, 1, kNoisy>(k, lim, s, m, z, out, x0, len)
                      : step_span<kThreshold, 0, kNoisy>(k, lim, s, m, z, out, x0, len);
  }
}

// One span of a step's backward: grad_m and grad_s; returns the span's sum of the
// threshold's gradient terms. Templated like step_span, for the same reason.
template <int64_t kMode, int kReclip, typename scalar_t, typename acc>
acc step_grad_span(const Step<acc>& k, acc lim, const scalar_t* __restrict__ s, const scalar_t* __restrict__ m,
                   const scalar_t* __restrict__ gp, const scalar_t* __restrict__ gx, scalar_t* __restrict__ gm,
                   scalar_t* __restrict__ gs, int64_t len) {
  acc sq = 0;
  for (int64_t i = 0; i < len; ++i) {
    acc g_m, g_s;
    sq += step_grad_element<acc, kReclip>(k, kMode, lim, static_cast<acc>(s[i]), static_cast<acc>(m[i]),
                                          static_cast<acc>(gp[i]), static_cast<acc>(gx[i]), g_m, g_s);
    gm[i] = static_cast<scalar_t>(g_m);
    gs[i] = static_cast<scalar_t>(g_s);
  }
  return sq;
}

template <typename scalar_t, typename acc>
acc step_grad_span(int64_t mode, const Step<acc>& k, acc lim, const scalar_t* s, const scalar_t* m,
                   const scalar_t* gp, const scalar_t* gx, scalar_t* gm, scalar_t* gs, int64_t len) {
  switch (mode) {
    case kNoClip: return step_grad_span<kNoClip, 0>(k, lim, s, m, gp, gx, gm, gs, len);
    case kClip:
      return k.reclip ? step_grad_span<kClip, 1>(k, lim, s, m, gp, gx, gm, gs, len)
                      : step_grad_span<kClip, 0>(k, lim, s, m, gp, gx, gm, gs, len);
    default:
      return k.reclip ? step_grad_span<kThreshold, 1>(k, lim, s, m, gp, gx, gm, gs, len)
                      : step_grad_span<kThreshold, 0>(k, lim, s, m, gp, gx, gm, gs, len);
  }
}

std::tuple<at::Tensor, at::Tensor> step_cpu(
    const at::Tensor& m_, const at::Tensor& s_, const c10::optional<at::Tensor>& noise_,
    const at::Tensor& t_, const at::Tensor& prev_, const at::Tensor& table_,
    const c10::optional<at::Tensor>& threshold_, int64_t kind, int64_t prediction,
    bool clip_sample, double clip_range, double eta, bool use_clipped, double final_alpha) {
  const char* op = "pykernels::diffusion_step";
  check_step(op, m_, s_, noise_, t_, prev_, table_, threshold_, kind, prediction, clip_range, eta,
             final_alpha, at::kCPU);
  const auto m = m_.contiguous(), s = s_.contiguous();
  const auto nz = noise_.has_value() ? noise_->contiguous() : at::Tensor();
  const auto t = t_.to(at::kLong).contiguous(), prev = prev_.to(at::kLong).contiguous();
  const StepArgs A = step_args(kind, prediction, clip_sample, clip_range, eta, use_clipped,
                               final_alpha, threshold_.has_value());
  auto out = at::empty_like(s), x0c = at::empty_like(s);
  PK_DISPATCH_FLOATING(s.scalar_type(), "diffusion_step_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const auto accT = c10::CppTypeToScalarType<acc>::value;
    const auto table = table_as(table_, accT);
    const auto q = threshold_.has_value() ? threshold_->contiguous() : at::Tensor();
    const Flat fl = flat(s);
    const int64_t N = fl.N, D = fl.D;
    const scalar_t *pm = m.const_data_ptr<scalar_t>(), *ps = s.const_data_ptr<scalar_t>();
    const scalar_t* pn = nz.defined() ? nz.const_data_ptr<scalar_t>() : nullptr;
    const acc* pq = q.defined() ? q.const_data_ptr<acc>() : nullptr;
    const int64_t *pt = t.const_data_ptr<int64_t>(), *pp = prev.const_data_ptr<int64_t>();
    const acc* tab = table.const_data_ptr<acc>();
    const int64_t T = table.numel();
    scalar_t *po = out.data_ptr<scalar_t>(), *px = x0c.data_ptr<scalar_t>();
    for_each_chunk(N, D, [&](int64_t n, int64_t, int64_t b, int64_t e) {
      const auto k = step_coefs_at<acc>(A.p, tab, T, pt[n], pp[n]);
      const acc lim = pq != nullptr ? pq[n] : acc(A.clip_range);
      const bool noisy = pn != nullptr && k.on != acc(0);  // DDPM t = 0, DDIM eta = 0: noise not read
      const int64_t o = n * D + b;
      if (noisy) {
        step_span<true>(A.clip_mode, k, lim, ps + o, pm + o, pn + o, po + o, px + o, e - b);
      } else {
        step_span<false>(A.clip_mode, k, lim, ps + o, pm + o, static_cast<const scalar_t*>(nullptr), po + o,
                         px + o, e - b);
      }
    });
  });
  return {out, x0c};
}

// Gradients of (prev_sample, pred_original_sample) w.r.t. model_output, sample and the
// per-sample threshold (empty [0] without thresholding). With gc = ox gp + gx0 (the
// grad reaching x0c):
//   clip:      g_x0 = gc [-r < x0 < r]                        (torch.clamp, scalar bounds)
//   threshold: g_x0 = gc w / q, w = 1 inside, 1/2 at +-q, 0 outside (tensor bounds),
//              g_q  = sum_i gc_i (dc_i/dq - x0c_i) / q, dc/dq = 1 above q, 1/2 at q,
//                     -1 below -q, -1/2 at -q
//   grad_m = om gp + xm g_x0,  grad_s = os gp + xs g_x0.
std::tuple<at::Tensor, at::Tensor, at::Tensor> step_backward_cpu(
    const at::Tensor& gp_, const at::Tensor& gx_, const at::Tensor& m_, const at::Tensor& s_,
    const at::Tensor& t_, const at::Tensor& prev_, const at::Tensor& table_,
    const c10::optional<at::Tensor>& threshold_, int64_t kind, int64_t prediction,
    bool clip_sample, double clip_range, double eta, bool use_clipped, double final_alpha) {
  const char* op = "pykernels::diffusion_step_backward";
  check_step(op, m_, s_, c10::nullopt, t_, prev_, table_, threshold_, kind, prediction,
             clip_range, eta, final_alpha, at::kCPU);
  check_like(op, "grad_prev_sample", gp_, "sample", s_);
  check_like(op, "grad_pred_original_sample", gx_, "sample", s_);
  const auto m = m_.contiguous(), s = s_.contiguous(), gp = gp_.contiguous(), gx = gx_.contiguous();
  const auto t = t_.to(at::kLong).contiguous(), prev = prev_.to(at::kLong).contiguous();
  const StepArgs A = step_args(kind, prediction, clip_sample, clip_range, eta, use_clipped,
                               final_alpha, threshold_.has_value());
  auto gm = at::empty_like(s), gs = at::empty_like(s);
  at::Tensor gq;
  PK_DISPATCH_FLOATING(s.scalar_type(), "diffusion_step_backward_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const auto accT = c10::CppTypeToScalarType<acc>::value;
    const auto table = table_as(table_, accT);
    const auto q = threshold_.has_value() ? threshold_->contiguous() : at::Tensor();
    const Flat fl = flat(s);
    const int64_t N = fl.N, D = fl.D;
    const int64_t C = chunks_per_sample(D);
    auto partial = at::zeros({q.defined() ? N : 0, C}, s.options().dtype(accT));
    const scalar_t *pm = m.const_data_ptr<scalar_t>(), *ps = s.const_data_ptr<scalar_t>();
    const scalar_t *pgp = gp.const_data_ptr<scalar_t>(), *pgx = gx.const_data_ptr<scalar_t>();
    const acc* pq = q.defined() ? q.const_data_ptr<acc>() : nullptr;
    acc* ppart = partial.data_ptr<acc>();
    const int64_t *pt = t.const_data_ptr<int64_t>(), *pp = prev.const_data_ptr<int64_t>();
    const acc* tab = table.const_data_ptr<acc>();
    const int64_t T = table.numel();
    scalar_t *om_ = gm.data_ptr<scalar_t>(), *os_ = gs.data_ptr<scalar_t>();
    for_each_chunk(N, D, [&](int64_t n, int64_t c, int64_t b, int64_t e) {
      const auto k = step_coefs_at<acc>(A.p, tab, T, pt[n], pp[n]);
      const acc lim = pq != nullptr ? pq[n] : acc(A.clip_range);
      const int64_t o = n * D;
      const acc sq = step_grad_span(A.clip_mode, k, lim, ps + o + b, pm + o + b, pgp + o + b, pgx + o + b,
                                    om_ + o + b, os_ + o + b, e - b);
      if (pq != nullptr) ppart[n * C + c] = sq / lim;
    });
    gq = q.defined() ? sum_chunks(partial) : at::empty({0}, s.options().dtype(accT));
  });
  return {gm, gs, gq};
}

}  // namespace
}  // namespace cpu
}  // namespace pykernels

TORCH_LIBRARY_IMPL(pykernels, CPU, m) {
  using namespace pykernels::cpu;
  m.impl("diffusion_mix", &mix_cpu);
  m.impl("diffusion_mix_backward", &mix_backward_cpu);
  m.impl("diffusion_loss", &loss_cpu);
  m.impl("diffusion_loss_backward", &loss_backward_cpu);
  m.impl("diffusion_step", &step_cpu);
  m.impl("diffusion_step_backward", &step_backward_cpu);
}
