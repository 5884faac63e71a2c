// CPU kernels of the diffusion family: add_noise / velocity / predicted x0 ("mix"), the
// training loss, and the DDPM / DDIM sampler steps, each one pass over the elements.
//
// Tensors are [N, D] (N samples). Work is split into fixed chunks of kChunk elements of
// one sample (at::parallel_for over N x chunks); a chunk computes its sample's
// coefficients once from the table, then streams at::vec vectors in the accumulation
// type. Per-sample sums (loss, threshold gradient) are summed per chunk and the chunks
// added in order, so results do not depend on the thread count.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "common/cpu_vec.h"
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

// f(i, width) over [b, e) in vectors (the last one partial).
template <typename IO, typename F>
inline void for_vecs(int64_t b, int64_t e, F&& f) {
  int64_t i = b;
  for (; i + IO::kWidth <= e; i += IO::kWidth) f(i, IO::kWidth);
  if (i < e) f(i, e - i);
}

template <typename IO, typename scalar_t>
inline typename IO::Vec ld(const scalar_t* p, int64_t w) {
  return w == IO::kWidth ? IO::load(p) : IO::load(p, w);
}

struct Flat {
  int64_t N, D;
};
inline Flat flat(const at::Tensor& x) {
  const int64_t N = x.size(0);
  return {N, N == 0 ? 0 : x.numel() / N};
}

template <typename acc>
inline acc vsum(const at::vec::Vectorized<acc>& v) {
  return at::vec::vec_reduce_all<acc>(
      [](at::vec::Vectorized<acc>& a, at::vec::Vectorized<acc>& b) { return a + b; }, v);
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
    using IO = VecIO<scalar_t>;
    using AO = VecIO<acc>;
    using V = typename IO::Vec;
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
      const V cx(k.cx), cy(k.cy);
      const int64_t o = n * D;
      for_vecs<IO>(b, e, [&](int64_t i, int64_t w) {
        const V r = at::vec::fmadd(cx, ld<IO>(px + o + i, w), cy * ld<IO>(py + o + i, w));
        if (pacc != nullptr) AO::store(pacc + o + i, r, w);
        else IO::store(pout + o + i, r, w);
      });
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
  check_same_device(op, "grad", grad_, "x", x);
  check_same_shape(op, "grad", grad_, "x", x);
  const auto t = t_.to(at::kLong).contiguous();
  auto gx = at::empty_like(x, at::MemoryFormat::Contiguous), gy = at::empty_like(gx);
  PK_DISPATCH_FLOATING(x.scalar_type(), "diffusion_mix_backward_cpu", [&] {
    using acc = acc_t<scalar_t>;
    using IO = VecIO<scalar_t>;
    using AO = VecIO<acc>;
    using V = typename IO::Vec;
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
      const V cx(k.cx), cy(k.cy);
      const int64_t o = n * D;
      for_vecs<IO>(b, e, [&](int64_t i, int64_t w) {
        const V gv = ld<AO>(pg + o + i, w);
        IO::store(ox + o + i, cx * gv, w);
        IO::store(oy + o + i, cy * gv, w);
      });
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
    using IO = VecIO<scalar_t>;
    using AO = VecIO<acc>;
    using V = typename IO::Vec;
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
      const V tx(k.cx), tn(k.cy);
      const int64_t o = n * D;
      V s(0);
      for_vecs<IO>(b, e, [&](int64_t i, int64_t w) {
        const V d = ld<IO>(pm + o + i, w) - at::vec::fmadd(tx, ld<IO>(px + o + i, w), tn * ld<IO>(pn + o + i, w));
        const V sq = d * d;  // zero past the tail: loads pad with zeros
        if (po != nullptr) AO::store(po + o + i, sq, w);
        s = s + sq;
      });
      pp[n * C + c] = vsum(s);
    });
    if (!elementwise) out = sum_chunks(partial);
  });
  return out;
}

// grad: [N] (per-sample sums) or per element, accumulation dtype.
// d = m - target: grad_m = 2 g d, grad_x0 = -2 g d tx, grad_noise = -2 g d tn.
std::tuple<at::Tensor, at::Tensor, at::Tensor> loss_backward_cpu(
    const at::Tensor& grad_, const at::Tensor& m_, const at::Tensor& x0_, const at::Tensor& noise_,
    const at::Tensor& t_, const at::Tensor& table_, int64_t prediction, bool elementwise) {
  const char* op = "pykernels::diffusion_loss_backward";
  check_loss(op, m_, x0_, noise_, t_, table_, prediction, at::kCPU);
  check_same_device(op, "grad", grad_, "model_output", m_);
  TORCH_CHECK_VALUE(elementwise ? grad_.sizes() == m_.sizes()
                                : (grad_.dim() == 1 && grad_.size(0) == m_.size(0)),
                    op, ": argument 'grad' must have shape ",
                    elementwise ? m_.sizes() : m_.sizes().slice(0, 1), ", got ", grad_.sizes());
  const auto m = m_.contiguous(), x0 = x0_.contiguous(), nz = noise_.contiguous();
  const auto t = t_.to(at::kLong).contiguous();
  auto gm = at::empty_like(m), gx = at::empty_like(m), gn = at::empty_like(m);
  PK_DISPATCH_FLOATING(m.scalar_type(), "diffusion_loss_backward_cpu", [&] {
    using acc = acc_t<scalar_t>;
    using IO = VecIO<scalar_t>;
    using AO = VecIO<acc>;
    using V = typename IO::Vec;
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
    scalar_t *om = gm.data_ptr<scalar_t>(), *ox = gx.data_ptr<scalar_t>(), *on = gn.data_ptr<scalar_t>();
    for_each_chunk(N, D, [&](int64_t n, int64_t, int64_t b, int64_t e) {
      const auto k = target_coefs<acc>(prediction, alpha_at(tab, T, pt[n]));
      const V tx(k.cx), tn(k.cy), two(2);
      const int64_t o = n * D;
      for_vecs<IO>(b, e, [&](int64_t i, int64_t w) {
        const V gv = elementwise ? ld<AO>(pg + o + i, w) : V(pg[n]);
        const V d = ld<IO>(pm + o + i, w) - at::vec::fmadd(tx, ld<IO>(px + o + i, w), tn * ld<IO>(pn + o + i, w));
        const V h = two * gv * d;
        IO::store(om + o + i, h, w);
        IO::store(ox + o + i, V(0) - tx * h, w);
        IO::store(on + o + i, V(0) - tn * h, w);
      });
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

// at::vec version of clip_x0: x0c and the limit per sample.
template <typename V>
inline V clip_vec(int64_t mode, const V& x0, const V& lim) {
  if (mode == kNoClip) return x0;
  const V c = at::vec::clamp(x0, V(0) - lim, lim);
  return mode == kThreshold ? c / lim : c;
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
    using IO = VecIO<scalar_t>;
    using V = typename IO::Vec;
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
      const V xs(k.xs), xm(k.xm), ox(k.ox), os(k.os), om(k.om), on(k.on);
      const V lim(pq != nullptr ? pq[n] : acc(A.clip_range));
      const bool noisy = pn != nullptr && k.on != acc(0);
      const int64_t o = n * D;
      for_vecs<IO>(b, e, [&](int64_t i, int64_t w) {
        const V sv = ld<IO>(ps + o + i, w), mv = ld<IO>(pm + o + i, w);
        const V c = clip_vec(A.clip_mode, at::vec::fmadd(xs, sv, xm * mv), lim);
        V r = at::vec::fmadd(ox, c, at::vec::fmadd(os, sv, om * mv));
        if (noisy) r = at::vec::fmadd(on, ld<IO>(pn + o + i, w), r);
        IO::store(po + o + i, r, w);
        IO::store(px + o + i, c, w);
      });
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
    using IO = VecIO<scalar_t>;
    using V = typename IO::Vec;
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
      const V xs(k.xs), xm(k.xm), ox(k.ox), os(k.os), om(k.om);
      const acc lim_s = pq != nullptr ? pq[n] : acc(A.clip_range);
      const V lim(lim_s), nlim(-lim_s), zero(0), one(1), half(0.5);
      const int64_t o = n * D;
      V sq(0);
      for_vecs<IO>(b, e, [&](int64_t i, int64_t w) {
        const V sv = ld<IO>(ps + o + i, w), mv = ld<IO>(pm + o + i, w);
        const V gpv = ld<IO>(pgp + o + i, w);
        const V gc = at::vec::fmadd(ox, gpv, ld<IO>(pgx + o + i, w));
        V g0 = gc;
        if (A.clip_mode != kNoClip) {
          // torch.clamp's gradient: a scalar bound (clip) passes it strictly inside; a
          // tensor bound (threshold) splits it half-half with the bound at a tie.
          const V x0 = at::vec::fmadd(xs, sv, xm * mv);
          const V at_hi = V::blendv(zero, half, x0 == lim), at_lo = V::blendv(zero, half, x0 == nlim);
          g0 = gc * V::blendv(zero, one, (x0 > nlim) & (x0 < lim));
          if (A.clip_mode == kThreshold) {
            g0 = (g0 + gc * (at_hi + at_lo)) / lim;
            const V above = V::blendv(zero, one, x0 > lim) - V::blendv(zero, one, x0 < nlim) + at_hi - at_lo;
            const V x0c = at::vec::clamp(x0, nlim, lim) / lim;
            sq = at::vec::fmadd(gc, above - x0c, sq);  // tail lanes: gc = 0
          }
        }
        IO::store(om_ + o + i, at::vec::fmadd(om, gpv, xm * g0), w);
        IO::store(os_ + o + i, at::vec::fmadd(os, gpv, xs * g0), w);
      });
      if (pq != nullptr) ppart[n * C + c] = vsum(sq) / lim_s;
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
