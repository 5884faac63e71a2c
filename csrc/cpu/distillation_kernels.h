// The CPU kernels of the distillation family, compiled once per CPU capability: included
// by distillation.cpp (baseline flags, namespace `generic`) and by distillation_avx2.cpp
// (AVX2 + FMA, namespace `avx2`), which define PK_DISTILL_NS first. distillation.cpp picks
// one at run time. No include guard: each translation unit includes this once.
//
// One kernel serves the three ops. Each row is processed by one thread, in a fixed order
// (deterministic), in at::vec vectors of the accumulation dtype:
//   pass 1  row maxima of the student (and teacher) logits;
//   pass 2  exponentials of d = (logit - rowmax) / T, their sums and the KL numerators;
//           the exponentials go to a per-thread scratch row (O(threads * V), not [rows, V]);
//   pass 3  (0 < beta < 1 only) log m and the two KL(. || m) terms;
//   pass 4  the gradient of the row's loss, written in the forward so that the backward
//           only scales it by the upstream gradient (pykernels::distillation_scale_grad).
// Passes 2-4 re-read a row that is still in cache (V = 32000 float32: 128 KB per tensor).
// Working in (logit - rowmax) / T keeps logits of +-1e4 with T = 0.05 finite and exact.
#ifndef PK_DISTILL_NS
#error "define PK_DISTILL_NS before including cpu/distillation_kernels.h"
#endif

namespace pykernels {
namespace cpu {
namespace PK_DISTILL_NS {
namespace {

#ifdef CPU_CAPABILITY_AVX2
// at::vec must have been included inside the AVX2 region, not before it.
static_assert(at::vec::Vectorized<float>::size() == 8, "the AVX2 build got baseline at::vec");
#endif

template <typename acc>
using AccVec = at::vec::Vectorized<acc>;

template <typename acc>
inline AccVec<acc> vexp(const AccVec<acc>& x) {
  if constexpr (std::is_same_v<acc, float>) {
    return x.exp_u20();  // ~20 ulp: far inside the float32 tolerance, ~3x faster than exp()
  } else {
    return x.exp();
  }
}

// expm1(x) for |x| <= 1/2. float32: Taylor to x^8 by Horner (the rest is below 1.2e-8 of
// |x|, under float32's 6e-8), eight FMAs instead of at::vec's expm1, which this build runs
// lane by lane. float64: at::vec's expm1.
template <typename acc>
inline AccVec<acc> vexpm1_near(const AccVec<acc>& x) {
  if constexpr (std::is_same_v<acc, float>) {
    using V = AccVec<float>;
    V p(1.0f / 40320.0f);  // 1/8!
    for (const float c : {1.0f / 5040.0f, 1.0f / 720.0f, 1.0f / 120.0f, 1.0f / 24.0f, 1.0f / 6.0f, 0.5f, 1.0f}) {
      p = at::vec::fmadd(p, x, V(c));
    }
    return p * x;
  } else {
    return x.expm1();
  }
}

template <typename acc>
inline acc vsum(const AccVec<acc>& v) {
  return at::vec::vec_reduce_all<acc>([](AccVec<acc>& a, AccVec<acc>& b) { return a + b; }, v);
}

template <typename acc>
inline acc vmax(const AccVec<acc>& v) {
  return at::vec::vec_reduce_all<acc>(
      [](AccVec<acc>& a, AccVec<acc>& b) { return at::vec::maximum(a, b); }, v);
}

// One row of any op of the family. Scratch: 4 rows of V accumulators owned by the thread.
template <typename scalar_t>
struct RowKernel {
  using acc = acc_t<scalar_t>;
  using IO = VecIO<scalar_t>;
  using Vec = typename IO::Vec;
  static constexpr int64_t W = IO::kWidth;

  const DistillSettings& st;
  const int64_t D;
  acc *es, *et, *e1;  // exp(d_S), exp(d_T), exp(s - max) at T = 1

  acc T() const { return acc(st.temperature); }
  acc invT() const { return acc(1) / acc(st.temperature); }
  // The hard term's softmax (T = 1) is the student's when T == 1.
  bool share1() const { return st.temperature == 1.0; }

  template <typename F>
  void chunks(F&& f, int64_t begin, int64_t end) const {
    int64_t i = begin;
    for (; i + W <= end; i += W) f(i, W);
    if (i < end) f(i, end - i);
  }
  template <typename F>
  void chunks(F&& f) const {
    chunks(f, 0, D);
  }
  // Sums over a row: f accumulates kBlock elements into block partials, flush() adds them
  // to the totals. Two-level summation keeps the rounding error of V = 262144 sums small.
  static constexpr int64_t kBlock = 4096;
  template <typename F, typename G>
  void blocked_chunks(F&& f, G&& flush) const {
    for (int64_t b0 = 0; b0 < D; b0 += kBlock) {
      chunks(f, b0, std::min(D, b0 + kBlock));
      flush();
    }
  }
  template <size_t N>
  static void add_and_clear(std::array<Vec, N>& total, std::array<Vec, N>& block) {
    for (size_t k = 0; k < N; ++k) {
      total[k] += block[k];
      block[k] = Vec(0);
    }
  }
  static Vec load(const scalar_t* p, int64_t n) { return n == W ? IO::load(p) : IO::load(p, n); }
  static Vec load_acc(const acc* p, int64_t n) { return n == W ? Vec::loadu(p) : Vec::loadu(p, n); }
  // v on the first n lanes, fill on the rest (the tail of a row).
  static Vec keep(const Vec& v, int64_t n, acc fill = acc(0)) {
    return n == W ? v : Vec::set(Vec(fill), v, n);
  }

  // log(Zb / Za) given d = sum (f - e) = Zb - Za summed without cancellation. For close
  // distributions (Zb / Za in [1/2, 2]) as log1p(d / Za): log Zb - log Za cancels there (8.5%
  // off at a KL of 1e-8 in float32; the long fuzz run: 8.8e-5 at a KL of 1e-5). Elsewhere d
  // itself is a sum of terms of both signs that cancels to far below Za, and log1p would
  // magnify its rounding by Za / Zb: log of the ratio (a uniform student of 1025 classes
  // against Zb = 2.9, 1.4e-5 of the loss, the long fuzz run of 2026-12-02). The CUDA and
  // Triton kernels take the same rule.
  static acc log_ratio(acc Zb, acc Za, acc d) {
    const acc r = Zb / Za;
    return (r >= acc(0.5) && r <= acc(2)) ? std::log1p(d / Za) : std::log(r);
  }

  acc row_max(const scalar_t* x) const {
    const acc ninf = -std::numeric_limits<acc>::infinity();
    Vec m(ninf);
    chunks([&](int64_t i, int64_t n) { m = at::vec::maximum(m, keep(load(x + i, n), n, ninf)); });
    return vmax(m);
  }

  // Loss of one counted row; writes the gradients when gs / gt are given. y: the label
  // (only read when st.hard).
  acc run(const scalar_t* s, const scalar_t* t, int64_t y, scalar_t* gs, scalar_t* gt) const {
    const acc ms = row_max(s), mt = st.soft ? row_max(t) : acc(0);
    const Vec vms(ms), vmt(mt), vinvT(invT());
    const bool hard1 = st.hard && !share1();
    // pass 2
    std::array<Vec, 9> tot, blk;
    tot.fill(Vec(0));
    blk.fill(Vec(0));
    Vec &vZa = blk[0], &vZb = blk[1], &vWf = blk[2], &vWr = blk[3], &vQ = blk[4], &vWq = blk[5],
        &vZ1 = blk[6], &vS = blk[7], &vDd = blk[8];
    blocked_chunks([&](int64_t i, int64_t n) {
      const Vec x = load(s + i, n);
      const Vec ds = (x - vms) * vinvT;
      const Vec e = keep(vexp(ds), n);
      vZa += e;
      e.store(es + i, n);
      if (st.soft) {
        const Vec dt = (load(t + i, n) - vmt) * vinvT;
        const Vec f = keep(vexp(dt), n);
        vZb += f;
        f.store(et + i, n);
        const Vec diff = dt - ds;
        vWf = at::vec::fmadd(f, diff, vWf);
        vWr = at::vec::fmadd(e, diff, vWr);  // subtracted below: sum e (ds - dt)
        // sum (f - e) without the cancellation: e expm1(dt - ds) where |dt - ds| < 1/2
        // (elsewhere f and e differ by a factor of 1.65 or more, so f - e loses under 2 bits;
        // a NaN or inf takes the plain difference)
        const Vec near = diff.abs() < Vec(0.5);
        vDd += Vec::blendv(f - e, e * vexpm1_near<acc>(Vec::blendv(Vec(0), diff, near)), near);
      }
      if (st.probs) {
        const Vec q = load(t + i, n);  // zero on the tail
        vQ += q;
        vWq = at::vec::fmadd(q, ds, vWq);
      }
      if (hard1) {
        const Vec g = keep(vexp(x - vms), n);
        vZ1 += g;
        g.store(e1 + i, n);
      }
      if (st.hard && st.label_smoothing != 0) vS += keep(x - vms, n);
    }, [&] { add_and_clear(tot, blk); });
    const acc Za = vsum(tot[0]), logZa = std::log(Za);
    const acc Zb = st.soft ? vsum(tot[1]) : acc(1), logZb = std::log(Zb);
    // log(Zb / Za): see log_ratio. Only a soft target reads it and the two KLs.
    const acc logZba = log_ratio(Zb, Za, vsum(tot[8]));
    const acc A = vsum(tot[2]) / Zb, B = vsum(tot[3]) / Za;
    const acc KLf = A - logZba;  // KL(p_T || p_S)
    const acc KLr = logZba - B;  // KL(p_S || p_T)
    const acc Q = vsum(tot[4]), Wq = vsum(tot[5]);
    const acc Z1 = hard1 ? vsum(tot[6]) : Za;
    const bool jsd = st.soft && st.beta > 0 && st.beta < 1;
    acc KS = 0, KT = 0;
    if (jsd) jsd_terms(s, t, ms, mt, logZba, Za, Zb, KS, KT);

    acc loss = 0;
    if (st.soft) {
      const acc b = acc(st.beta);
      const acc d = st.beta == 0 ? KLf : st.beta == 1 ? KLr : b * KT + acc(1.0 - st.beta) * KS;
      loss += acc(st.soft_weight) * T() * T() * d;
    }
    // float64: log Za as log1p of the non-maximal terms, as log Z1 below (a soft target on
    // a confident row: a loss of 1.2e-16 came out as 2.2e-16, the long fuzz run)
    if (st.probs) loss += Q * (std::is_same_v<acc, double> ? log_z1(s, ms, es, Za) : logZa) - Wq;
    const acc ls = acc(st.label_smoothing), hw = acc(st.hard_weight);
    if (st.hard) {
      const acc logZ1 = std::is_same_v<acc, double> ? log_z1(s, ms, hard1 ? e1 : es, Z1) : std::log(Z1);
      const acc nll = logZ1 + (ms - static_cast<acc>(s[y]));
      const acc smooth = logZ1 - vsum(tot[7]) / acc(D);
      loss += hw * ((1 - ls) * nll + ls * smooth);
    }
    if (gs != nullptr || gt != nullptr) {
      Grad g{ms, mt, Za, Zb, logZa, logZb, logZba, Z1, KLf, KLr, KS, KT, Q, jsd};
      write_grads(s, t, y, g, gs, gt);
    }
    return loss;
  }

  // float64: log Z1 as log1p of the terms other than one maximum (each maximum's term is
  // exp(0) = 1): a confident row's loss of 1e-20 is below the rounding of log(1 + 1e-20)
  // (the long fuzz run: cross_entropy 0 against 5e-22). NaN and inf keep log Z1. e: the
  // row's exponentials exp((s - ms) / T') of that softmax, Z1 their sum.
  acc log_z1(const scalar_t* s, acc ms, const acc* e, acc Z1) const {
    if (!std::isfinite(Z1)) return std::log(Z1);
    acc rest = 0;
    int64_t n_max = 0;
    for (int64_t j = 0; j < D; ++j) {
      if (static_cast<acc>(s[j]) < ms) rest += e[j];
      else ++n_max;
    }
    return std::log1p(rest + acc(n_max - 1));
  }

  // 0 < beta < 1: KS = KL(p_S || m), KT = KL(p_T || m), m = beta p_T + (1 - beta) p_S.
  // Pass 4 recomputes the two log-ratios (jsd_logs) from x = log p_T - log p_S alone, x
  // formed as (dt - ds) - log(Zb / Za). Near x = 0 (close distributions) log(m / p_S) =
  // log1p(beta expm1(x)). Elsewhere, with d = x + log(beta / (1 - beta)) and
  // e = log1p(exp(-|d|)), log m = the larger of log(beta p_T), log((1 - beta) p_S) plus e,
  // so each ratio is a difference taken exactly: d >= 0: ls_m = -x - log beta - e,
  // lt_m = -log beta - e; d < 0: ls_m = -log(1 - beta) - e, lt_m = x - log(1 - beta) - e.
  // (log p_S - logaddexp(...) lost log(1 - beta) = -beta below p_S's rounding: a beta of
  // 1e-38 gave a loss of 9e-39 for 3.3e-38, in the fuzz run.)
  struct JsdLogs {
    Vec ls_m, lt_m;  // log p_S - log m, log p_T - log m
  };
  JsdLogs jsd_logs(const Vec& x) const {
    // beta and 1 - beta from the float64 setting (a float32 beta of 1 - 1e-7 is 1)
    const acc b = acc(st.beta), omb = acc(1.0 - st.beta), lb = std::log(st.beta), l1b = std::log1p(-st.beta);
    const Vec near = x.abs() < Vec(1), xn = Vec::blendv(Vec(0), x, near);
    Vec ls_near, lt_near;
    if (st.beta > 0.5) {  // the mirror image: log(m / p_T) = log1p((1 - beta) expm1(-x))
      const Vec v = (Vec(omb) * (Vec(0) - xn).expm1()).log1p();
      ls_near = Vec(0) - v - xn;
      lt_near = Vec(0) - v;
    } else {  // log(m / p_S) = log1p(beta expm1(x)); the JSD path only: exact expm1
      const Vec u = (Vec(b) * xn.expm1()).log1p();
      ls_near = Vec(0) - u;
      lt_near = xn - u;
    }
    const Vec d = x + Vec(acc(lb - l1b)), e = (Vec(0) - d.abs()).exp().log1p(), up = d >= Vec(0);
    const Vec ls_far = Vec::blendv(Vec(acc(-l1b)), Vec(0) - x - Vec(acc(lb)), up) - e;
    const Vec lt_far = Vec::blendv(x - Vec(acc(l1b)), Vec(acc(-lb)), up) - e;
    return {Vec::blendv(ls_far, ls_near, near), Vec::blendv(lt_far, lt_near, near)};
  }

  void jsd_terms(const scalar_t* s, const scalar_t* t, acc ms, acc mt, acc logZba, acc Za, acc Zb, acc& KS,
                 acc& KT) const {
    const Vec vms(ms), vmt(mt), vinvT(invT()), vlZba(logZba), iZa(1 / Za), iZb(1 / Zb);
    std::array<Vec, 2> tot, blk;
    tot.fill(Vec(0));
    blk.fill(Vec(0));
    Vec &vKS = blk[0], &vKT = blk[1];
    blocked_chunks([&](int64_t i, int64_t n) {
      const JsdLogs j = jsd_logs(((load(t + i, n) - vmt) * vinvT - (load(s + i, n) - vms) * vinvT) - vlZba);
      vKS = at::vec::fmadd(keep(load_acc(es + i, n) * iZa, n), j.ls_m, vKS);
      vKT = at::vec::fmadd(keep(load_acc(et + i, n) * iZb, n), j.lt_m, vKT);
    }, [&] { add_and_clear(tot, blk); });
    KS = vsum(tot[0]);
    KT = vsum(tot[1]);
  }

  struct Grad {
    acc ms, mt, Za, Zb, logZa, logZb, logZba, Z1, KLf, KLr, KS, KT, Q;
    bool jsd;
  };

  // Where a row of x reaches its maximum m: how often (n) and the first index (i).
  struct MaxAt {
    int64_t n = 0, i = 0;
  };
  MaxAt max_at(const scalar_t* x, acc m) const {
    MaxAt r;
    for (int64_t j = D - 1; j >= 0; --j) {
      if (static_cast<acc>(x[j]) == m) {
        ++r.n;
        r.i = j;
      }
    }
    return r;
  }

  // Each gradient row sums to 0 (the loss is invariant to a shift of the logits), so the
  // element at a row's maximum can be minus the sum of the others. Taken where the maximum
  // is unique and holds more than half of the probability (there its own formula cancels:
  // a reverse KL of two confident rows was 47% off in float32, fuzz) and the others do not
  // cancel among themselves (their sum is at least 1/4 of their magnitudes). A NaN or inf
  // keeps the element's own formula. The CUDA and Triton kernels take the same rule.
  static bool take_rest(const MaxAt& at, bool dominant, acc rest, acc rest_abs) {
    return at.n == 1 && dominant && std::isfinite(rest) && 4 * std::abs(rest) >= rest_abs;
  }

  // pass 4: d loss / d student logits into gs, d loss / d teacher into gt.
  void write_grads(const scalar_t* s, const scalar_t* t, int64_t y, const Grad& r, scalar_t* gs,
                   scalar_t* gt) const {
    const acc c = acc(st.soft_weight) * T(), b = acc(st.beta);
    const Vec vms(r.ms), vmt(r.mt), vinvT(invT()), iZa(1 / r.Za), iZb(1 / r.Zb), iZ1(1 / r.Z1);
    const Vec vlZa(r.logZa), vlZb(r.logZb), vc(c);
    const acc hw = acc(st.hard_weight), ls = acc(st.label_smoothing);
    const Vec vls(ls / acc(D)), vhw(hw);
    const bool hard1 = st.hard && !share1();
    const bool teacher_logits = gt != nullptr && st.soft;  // not probabilities: the rows sum to 0
    const MaxAt smax = gs != nullptr ? max_at(s, r.ms) : MaxAt{};
    const MaxAt tmax = teacher_logits ? max_at(t, r.mt) : MaxAt{};
    Vec gs_rest(0), gs_abs(0), gt_rest(0), gt_abs(0);
    chunks([&](int64_t i, int64_t n) {
      // The logits are re-read only where a log-probability is needed: the common case
      // (beta = 0, no teacher gradient) runs on the cached exponentials alone.
      auto ds = [&] { return (load(s + i, n) - vms) * vinvT; };
      auto lpT = [&] { return (load(t + i, n) - vmt) * vinvT - vlZb; };
      const Vec pS = load_acc(es + i, n) * iZa;
      Vec g(0), h(0);
      if (st.soft) {
        const Vec pT = load_acc(et + i, n) * iZb;
        if (st.beta == 0) {  // T (p_S - p_T);  teacher: T p_T (log p_T - log p_S - KL)
          g = vc * (pS - pT);
          if (gt) h = vc * pT * (lpT() - (ds() - vlZa) - Vec(r.KLf));
        } else if (st.beta == 1) {
          g = vc * pS * ((ds() - vlZa) - lpT() - Vec(r.KLr));
          if (gt) h = vc * (pT - pS);
        } else {  // T (1 - beta) p_S (log p_S - log m - KS);  T beta p_T (log p_T - log m - KT)
          const JsdLogs j = jsd_logs(((load(t + i, n) - vmt) * vinvT - ds()) - Vec(r.logZba));
          g = Vec(c * acc(1.0 - st.beta)) * pS * (j.ls_m - Vec(r.KS));
          if (gt) h = Vec(c * b) * pT * (j.lt_m - Vec(r.KT));
        }
      }
      if (st.probs) {  // (p_S Q - q) / T;  teacher (the probabilities): -log p_S
        g = (pS * Vec(r.Q) - load(t + i, n)) * vinvT;
        if (gt) h = vlZa - ds();
      }
      if (st.hard) {  // p - ls / V - (1 - ls) [j == y]
        const Vec p1 = hard1 ? load_acc(e1 + i, n) * iZ1 : pS;
        g = at::vec::fmadd(vhw, p1 - vls, g);
        if (y >= i && y < i + n) {
          acc buf[W];
          g.store(buf);
          buf[y - i] -= hw * (1 - ls);
          g = Vec::loadu(buf);
        }
      }
      if (gs) {
        IO::store(gs + i, g, n);
        const Vec rest = keep(Vec::blendv(g, Vec(0), load(s + i, n) == vms), n);
        gs_rest += rest;
        gs_abs += rest.abs();
      }
      if (gt) IO::store(gt + i, h, n);
      if (teacher_logits) {
        const Vec rest = keep(Vec::blendv(h, Vec(0), load(t + i, n) == vmt), n);
        gt_rest += rest;
        gt_abs += rest.abs();
      }
    });
    // the maximum's probability: 1 / Za, or 1 / Z1 for the hard term's own softmax
    const bool dominant = r.Za < 2 || (hard1 && r.Z1 < 2);
    if (gs && take_rest(smax, dominant, vsum(gs_rest), vsum(gs_abs))) gs[smax.i] = scalar_t(-vsum(gs_rest));
    if (teacher_logits && take_rest(tmax, r.Zb < 2, vsum(gt_rest), vsum(gt_abs))) gt[tmax.i] = scalar_t(-vsum(gt_rest));
  }
};

}  // namespace

// Runs the family's kernel. student [..., V]; teacher: logits or probabilities like
// student, or undefined; labels [...] int64 or undefined.
std::tuple<at::Tensor, at::Tensor, at::Tensor> run_rows(const DistillSettings& st, const at::Tensor& s_,
                                                        const at::Tensor& t_, const at::Tensor& labels_) {
  const DistillCall c = distill_call(st, s_, t_, labels_);
  const at::Tensor &s = c.s, &t = c.t, &labels = c.labels, &out = c.loss, &gs = c.grad_s, &gt = c.grad_t;
  const int64_t D = c.V, rows = c.rows;
  if (rows == 0) return {out, gs, gt};
  PK_DISPATCH_FLOATING(s.scalar_type(), "distillation_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const scalar_t* ps = s.const_data_ptr<scalar_t>();
    const scalar_t* pt = t.defined() ? t.const_data_ptr<scalar_t>() : nullptr;
    const int64_t* pl = labels.defined() ? labels.const_data_ptr<int64_t>() : nullptr;
    acc* po = out.data_ptr<acc>();
    scalar_t* pgs = st.grad_s ? gs.data_ptr<scalar_t>() : nullptr;
    scalar_t* pgt = st.grad_t ? gt.data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, rows, row_grain(D), [&](int64_t begin, int64_t end) {
      std::vector<acc> scratch(3 * D);
      const RowKernel<scalar_t> k{st, D, scratch.data(), scratch.data() + D, scratch.data() + 2 * D};
      for (int64_t r = begin; r < end; ++r) {
        scalar_t* grow_s = pgs ? pgs + r * D : nullptr;
        scalar_t* grow_t = pgt ? pgt + r * D : nullptr;
        if (pl && pl[r] == st.ignore_index) {  // drops out of both terms
          po[r] = acc(0);
          if (grow_s) std::fill(grow_s, grow_s + D, scalar_t(0));
          if (grow_t) std::fill(grow_t, grow_t + D, scalar_t(0));
          continue;
        }
        po[r] = k.run(ps + r * D, pt ? pt + r * D : nullptr, st.hard ? pl[r] : -1, grow_s, grow_t);
      }
    });
  });
  return {out, gs, gt};
}

// out[..., j] = grad[...] * x[..., j] (0 where x is 0), in x's dtype, products in the
// accumulation dtype. x and out are contiguous; out may be x itself.
void scale_rows(const at::Tensor& grad_, const at::Tensor& x, const at::Tensor& out) {
  const int64_t D = x.size(-1), rows = D == 0 ? 0 : x.numel() / D;
  if (rows == 0) return;
  PK_DISPATCH_FLOATING(x.scalar_type(), "distillation_scale_grad_cpu", [&] {
    using acc = acc_t<scalar_t>;
    using IO = VecIO<scalar_t>;
    const auto grad = grad_.to(c10::CppTypeToScalarType<acc>::value).contiguous();
    const acc* pg = grad.const_data_ptr<acc>();
    const scalar_t* px = x.const_data_ptr<scalar_t>();
    scalar_t* po = out.data_ptr<scalar_t>();
    at::parallel_for(0, rows, row_grain(D), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const typename IO::Vec k(pg[r]);
        const scalar_t* xr = px + r * D;
        scalar_t* orow = po + r * D;
        const typename IO::Vec zero(0);
        // An exact zero stays zero whatever the upstream gradient: an ignored row's gradient
        // is 0 even when batchmean over zero counted rows sends an inf upstream.
        auto scaled = [&](const typename IO::Vec& x) {
          return IO::Vec::blendv(x * k, zero, x == zero);
        };
        int64_t i = 0;
        for (; i + IO::kWidth <= D; i += IO::kWidth) IO::store(orow + i, scaled(IO::load(xr + i)));
        if (i < D) IO::store(orow + i, scaled(IO::load(xr + i, D - i)), D - i);
      }
    });
  });
}

}  // namespace PK_DISTILL_NS
}  // namespace cpu
}  // namespace pykernels
