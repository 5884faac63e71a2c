// CUDA kernels of the distillation family: distillation_loss, cross_entropy and
// soft_target_cross_entropy are one kernel (distillation_kernel), one block per row (V up to
// 262144 and more), 16-byte packed loads when the rows allow it, int64 offsets, float32
// accumulation (float64 for float64); scale_grad_kernel is the backward of all three.
//
//   row_state   pass 1: each thread keeps online softmax statistics of its slice of the row
//               (State), rescaled when a maximum grows, merged by a fixed shuffle tree and
//               then across warps (deterministic)
//   jsd_sums    pass 2 (0 < beta < 1 only): KL(p_S || m), KL(p_T || m)
//   row_loss    the row's loss from those sums (thread 0)
//   row_grads   pass 3: d loss / d logits (and teacher), written in the forward so that the
//               backward only scales it by the upstream gradient
// Masked vocabularies: a logit of -inf is a probability of 0 and every term that probability
// weighs is 0 (0 log 0 = 0). A counted row whose maximum is -inf (all masked), or whose
// label is outside [0, V), gets a nan loss and gradient row: the kernel never reads out of
// bounds and never synchronises with the host to report it. The math is the CPU kernel's
// (cpu/distillation_kernels.h).
#include <torch/library.h>

#include <cmath>
#include <limits>

#include "common/cuda_utils.cuh"
#include "common/distillation_args.h"

namespace pykernels {
namespace cuda {
namespace {

constexpr int kMaxWarps = 32;
// The soft term a row computes.
enum Mode : int { kNone = 0, kForwardKL = 1, kReverseKL = 2, kJSD = 3, kTargetProbs = 4 };

// Math in the accumulation type (expf for float, exp for double, ...).
__device__ __forceinline__ float dexp(float x) { return expf(x); }
__device__ __forceinline__ double dexp(double x) { return exp(x); }
__device__ __forceinline__ float dlog(float x) { return logf(x); }
__device__ __forceinline__ double dlog(double x) { return log(x); }
__device__ __forceinline__ float dlog1p(float x) { return log1pf(x); }
__device__ __forceinline__ double dlog1p(double x) { return log1p(x); }
__device__ __forceinline__ float dexpm1(float x) { return expm1f(x); }
__device__ __forceinline__ double dexpm1(double x) { return expm1(x); }

// v, or 0 where the probability p is 0: 0 log 0 = 0, whatever v is (-inf or nan).
template <typename acc>
__device__ __forceinline__ acc zero_where(acc p, acc v) {
  return p == acc(0) ? acc(0) : v;
}

// Plain-value copy of the settings a kernel needs.
template <typename acc>
struct Params {
  acc inv_t, c, c_t, hw, ls, beta, omb, log_b, log_1b;  // c = soft_weight T, c_t = soft_weight T^2
  acc grad_scale;  // the gradients written are those of grad_scale * (row loss)
  int64_t ignore_index;
  int mode;
  bool hard, hard1, smooth, mirror, has_labels;  // hard1: T != 1; mirror: beta > 1/2
};

// Online statistics of (a slice of) a row, relative to its maxima ms, mt, with
// ds = (s - ms) / T, dt = (t - mt) / T, e = exp(ds), f = exp(dt):
//   za = sum e, zb = sum f, qs = sum q, z1 = sum exp(s - ms), ss = sum s, and
//   w = sum f (dt - ds) (kForwardKL), sum e (ds - dt) (kReverseKL), sum q ds (kTargetProbs).
template <typename acc>
struct State {
  acc ms, mt, za, zb, w, qs, z1, ss;
};

template <typename acc>
__device__ __forceinline__ State<acc> empty_state(int mode) {
  const acc ninf = -std::numeric_limits<acc>::infinity();
  const bool teacher = mode == kForwardKL || mode == kReverseKL || mode == kJSD;
  // Without a teacher mt stays 0, so that its shift is always 0.
  return {ninf, teacher ? ninf : acc(0), 0, 0, 0, 0, 0, 0};
}

// (new - old) / T, 0 when the maximum did not change (also -inf to -inf).
template <typename acc>
__device__ __forceinline__ acc shift(acc old_m, acc new_m, acc inv_t) {
  return new_m == old_m ? acc(0) : (new_m - old_m) * inv_t;
}

// A running maximum to subtract: 0 while it is -inf (every logit so far is -inf, and
// x - 0 = -inf gives exp = 0 where x - m would be nan).
template <typename acc>
__device__ __forceinline__ acc finite_or_zero(acc m) {
  return m == -std::numeric_limits<acc>::infinity() ? acc(0) : m;
}

// Re-expresses st relative to larger maxima ms >= st.ms, mt >= st.mt: sums of exponentials
// scale by exp(-sh); w also takes the shift of its log-ratio, e.g. sum f (dt - ds) becomes
// exp(-sh_t) (w + zb (sh_s - sh_t)). A sum that is 0 stays 0 (no 0 * inf).
template <typename acc>
__device__ __forceinline__ void rescale(State<acc>& st, acc ms, acc mt, const Params<acc>& p) {
  if (ms == st.ms && mt == st.mt) return;  // the common case once the maxima are found
  const acc sh_s = shift(st.ms, ms, p.inv_t), sh_t = shift(st.mt, mt, p.inv_t);
  const acc a_s = dexp(-sh_s), a_t = dexp(-sh_t);
  if (p.mode == kForwardKL) st.w = st.zb == acc(0) ? acc(0) : a_t * (st.w + st.zb * (sh_s - sh_t));
  if (p.mode == kReverseKL) st.w = st.za == acc(0) ? acc(0) : a_s * (st.w + st.za * (sh_t - sh_s));
  if (p.mode == kTargetProbs) st.w = st.qs == acc(0) ? acc(0) : st.w - st.qs * sh_s;
  st.za *= a_s;
  st.zb *= a_t;
  st.z1 *= dexp(-shift(st.ms, ms, acc(1)));
  st.ms = ms;
  st.mt = mt;
}

// Adds element (s, t) to st, whose maxima already cover it.
template <typename acc>
__device__ __forceinline__ void add_element(State<acc>& st, acc s, acc t, const Params<acc>& p) {
  const acc ds = (s - finite_or_zero(st.ms)) * p.inv_t, e = dexp(ds);
  st.za += e;
  if (p.mode == kForwardKL || p.mode == kReverseKL || p.mode == kJSD) {
    const acc dt = (t - finite_or_zero(st.mt)) * p.inv_t, f = dexp(dt);
    st.zb += f;
    if (p.mode == kForwardKL) st.w += zero_where(f, f * (dt - ds));
    if (p.mode == kReverseKL) st.w += zero_where(e, e * (ds - dt));
  }
  if (p.mode == kTargetProbs) {
    st.qs += t;
    st.w += zero_where(t, t * ds);
  }
  if (p.hard1) st.z1 += dexp(s - finite_or_zero(st.ms));
  if (p.smooth) st.ss += s;
}

// Symmetric in a and b (so every lane of a shuffle tree gets the same bits).
template <typename acc>
__device__ __forceinline__ State<acc> merge(State<acc> a, State<acc> b, const Params<acc>& p) {
  const acc ms = a.ms > b.ms ? a.ms : b.ms, mt = a.mt > b.mt ? a.mt : b.mt;
  rescale(a, ms, mt, p);
  rescale(b, ms, mt, p);
  return {ms, mt, a.za + b.za, a.zb + b.zb, a.w + b.w, a.qs + b.qs, a.z1 + b.z1, a.ss + b.ss};
}

template <typename acc>
__device__ __forceinline__ State<acc> shfl_state(const State<acc>& s, int offset) {
  auto f = [&](acc v) { return __shfl_xor_sync(0xffffffffu, v, offset); };
  return {f(s.ms), f(s.mt), f(s.za), f(s.zb), f(s.w), f(s.qs), f(s.z1), f(s.ss)};
}

template <typename acc>
__device__ __forceinline__ State<acc> warp_merge(State<acc> st, const Params<acc>& p) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) st = merge(st, shfl_state(st, offset), p);
  return st;
}

// The whole block's state, on every thread. smem: kMaxWarps states.
template <typename acc>
__device__ State<acc> block_merge(State<acc> st, const Params<acc>& p, State<acc>* smem) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, nwarps = blockDim.x / kWarp;
  st = warp_merge(st, p);
  if (lane == 0) smem[warp] = st;
  __syncthreads();
  if (warp == 0) {
    st = warp_merge(lane < nwarps ? smem[lane] : empty_state<acc>(p.mode), p);
    if (lane == 0) smem[0] = st;
  }
  __syncthreads();
  st = smem[0];
  __syncthreads();  // smem is reused
  return st;
}

template <typename acc>
__device__ acc block_sum(acc v, acc* smem) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, nwarps = blockDim.x / kWarp;
  v = warp_sum(v);
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = warp_sum(lane < nwarps ? smem[lane] : acc(0));
    if (lane == 0) smem[0] = v;
  }
  __syncthreads();
  v = smem[0];
  __syncthreads();
  return v;
}

// f(j0, xs[], xt[]) for each group of P consecutive elements this thread owns: 16-byte packs
// when kPacked, single elements otherwise. t is read only when given (else xt is -inf).
template <typename scalar_t, bool kPacked, typename F>
__device__ __forceinline__ void for_groups(const scalar_t* s, const scalar_t* t, int64_t V, F f) {
  using acc = acc_t<scalar_t>;
  constexpr int P = kPacked ? Pack<scalar_t>::kSize : 1;
  for (int64_t j = int64_t(threadIdx.x) * P; j < V; j += int64_t(blockDim.x) * P) {
    acc xs[P], xt[P];
    if constexpr (kPacked) {
      const Pack<scalar_t> ps = *reinterpret_cast<const Pack<scalar_t>*>(s + j);
      Pack<scalar_t> pt;
      if (t != nullptr) pt = *reinterpret_cast<const Pack<scalar_t>*>(t + j);
#pragma unroll
      for (int k = 0; k < P; ++k) {
        xs[k] = static_cast<acc>(ps.v[k]);
        xt[k] = t != nullptr ? static_cast<acc>(pt.v[k]) : -std::numeric_limits<acc>::infinity();
      }
    } else {
      xs[0] = static_cast<acc>(s[j]);
      xt[0] = t != nullptr ? static_cast<acc>(t[j]) : -std::numeric_limits<acc>::infinity();
    }
    f(j, xs, xt);
  }
}

template <typename scalar_t, bool kPacked>
__device__ __forceinline__ void store_group(scalar_t* out, int64_t j, const acc_t<scalar_t>* v) {
  if constexpr (kPacked) {
    Pack<scalar_t> p;
#pragma unroll
    for (int k = 0; k < Pack<scalar_t>::kSize; ++k) p.v[k] = static_cast<scalar_t>(v[k]);
    *reinterpret_cast<Pack<scalar_t>*>(out + j) = p;
  } else {
    out[j] = static_cast<scalar_t>(v[0]);
  }
}

// ---- row_state: pass 1 over this thread's slice, then the block's merged State.
template <typename scalar_t, bool kPacked>
__device__ State<acc_t<scalar_t>> row_state(const scalar_t* s, const scalar_t* t, int64_t V,
                                            const Params<acc_t<scalar_t>>& p,
                                            State<acc_t<scalar_t>>* smem) {
  using acc = acc_t<scalar_t>;
  constexpr int P = kPacked ? Pack<scalar_t>::kSize : 1;
  const bool teacher = p.mode == kForwardKL || p.mode == kReverseKL || p.mode == kJSD;
  State<acc> st = empty_state<acc>(p.mode);
  for_groups<scalar_t, kPacked>(s, t, V, [&](int64_t, const acc* xs, const acc* xt) {
    acc ms = st.ms, mt = st.mt;
#pragma unroll
    for (int k = 0; k < P; ++k) {
      ms = xs[k] > ms ? xs[k] : ms;
      if (teacher) mt = xt[k] > mt ? xt[k] : mt;
    }
    rescale(st, ms, mt, p);
#pragma unroll
    for (int k = 0; k < P; ++k) add_element(st, xs[k], xt[k], p);
  });
  return block_merge(st, p, smem);
}

// (log p_S - log m, log p_T - log m) for m = beta p_T + (1 - beta) p_S, from
// x = log p_T - log p_S. Close distributions (|x| < 1), where log m - log p cancels:
// log(m / p_S) = log1p(beta expm1(x)), or (mirror: beta > 1/2) its mirror image
// log(m / p_T) = log1p((1 - beta) expm1(-x)), 1 - beta from the host's float64. Elsewhere
// logaddexp: log m is the larger of log(beta p_T), log((1 - beta) p_S) plus
// log1p(exp(-|d|)), d = x + log(beta / (1 - beta)), each ratio a difference of exact terms.
// A masked side (x = +-inf) has ratio -inf (weighed by 0); the other's is -log beta or
// -log(1 - beta).
template <typename acc>
__device__ __forceinline__ void jsd_ratios(acc x, const Params<acc>& p, acc& ls_m, acc& lt_m) {
  if (fabs(x) < acc(1) && p.mirror) {
    const acc v = dlog1p(p.omb * dexpm1(-x));
    ls_m = -v - x;
    lt_m = -v;
  } else if (fabs(x) < acc(1)) {
    const acc u = dlog1p(p.beta * dexpm1(x));
    ls_m = -u;
    lt_m = x - u;
  } else {
    const acc d = x + (p.log_b - p.log_1b), e = dlog1p(dexp(-fabs(d)));
    ls_m = (d >= acc(0) ? -x - p.log_b : -p.log_1b) - e;
    lt_m = (d >= acc(0) ? -p.log_b : x - p.log_1b) - e;
  }
}

// The row's sums after pass 1 (and pass 2), and their logs.
template <typename acc>
struct RowSums {
  State<acc> st;
  acc lza, lzb, lzba, lz1, kl, ks, kt;  // lzba = log(Zb / Za): one rounding of the ratio
};

// ---- jsd_sums: KS = sum p_S log(p_S / m), KT = sum p_T log(p_T / m) (block sums).
template <typename scalar_t, bool kPacked>
__device__ void jsd_sums(const scalar_t* s, const scalar_t* t, int64_t V,
                         const Params<acc_t<scalar_t>>& p, RowSums<acc_t<scalar_t>>& r,
                         acc_t<scalar_t>* smem) {
  using acc = acc_t<scalar_t>;
  constexpr int P = kPacked ? Pack<scalar_t>::kSize : 1;
  acc ks = 0, kt = 0;
  for_groups<scalar_t, kPacked>(s, t, V, [&](int64_t, const acc* xs, const acc* xt) {
#pragma unroll
    for (int k = 0; k < P; ++k) {
      const acc ds = (xs[k] - r.st.ms) * p.inv_t, dt = (xt[k] - r.st.mt) * p.inv_t;
      acc ls_m, lt_m;
      jsd_ratios((dt - ds) - r.lzba, p, ls_m, lt_m);
      const acc ps = dexp(ds - r.lza), pt = dexp(dt - r.lzb);
      ks += zero_where(ps, ps * ls_m);
      kt += zero_where(pt, pt * lt_m);
    }
  });
  r.ks = block_sum(ks, smem);
  r.kt = block_sum(kt, smem);
}

// ---- row_loss: soft_weight T^2 D + soft-target CE + hard_weight CE, with
// KL(p_T || p_S) = w / Zb - log(Zb / Za), KL(p_S || p_T) = w / Za + log(Zb / Za) (r.kl),
// JSD = beta KT + (1 - beta) KS, soft-target CE = Q log Za - sum q ds,
// CE = (1 - ls) (log Z1 - (s_y - ms)) + ls (log Z1 + ms - sum s / V).
template <typename acc>
__device__ acc row_loss(const RowSums<acc>& r, const Params<acc>& p, acc s_y, int64_t V) {
  acc loss = 0;
  if (p.mode == kForwardKL || p.mode == kReverseKL) loss = p.c_t * r.kl;
  if (p.mode == kJSD) loss = p.c_t * (p.beta * r.kt + p.omb * r.ks);
  if (p.mode == kTargetProbs) loss = r.st.qs * r.lza - r.st.w;
  if (p.hard) {
    const acc nll = r.lz1 - (s_y - r.st.ms);
    // without smoothing no mean over classes: a -inf logit would make it inf, 0 * inf = nan
    const acc smooth = p.smooth ? p.ls * (r.lz1 + r.st.ms - r.st.ss / acc(V)) : acc(0);
    loss += p.hw * ((1 - p.ls) * nll + smooth);
  }
  return loss;
}

// One element's (d loss / d s, d loss / d t), c = soft_weight T:
//   kForwardKL   c (p_S - p_T);                      teacher c p_T (x - KL)
//   kReverseKL   c p_S (-x - KL);                    teacher c (p_T - p_S)
//   kJSD         c (1 - beta) p_S (log(p_S/m) - KS); teacher c beta p_T (log(p_T/m) - KT)
//   kTargetProbs (Q p_S - q) / T;                    target  -log p_S (0 for q = 0 on -inf)
//   hard term    + hard_weight (p1 - ls / V - (1 - ls) [j == y]),  p1 = softmax(s)
// with x = log p_T - log p_S; probability-0 terms are 0.
template <typename acc>
__device__ __forceinline__ void element_grads(acc s, acc t, bool is_label, const RowSums<acc>& r,
                                              const Params<acc>& p, int64_t V, acc& g, acc& h) {
  const acc ds = (s - r.st.ms) * p.inv_t, ps = dexp(ds - r.lza);
  g = 0;
  h = 0;
  if (p.mode == kForwardKL || p.mode == kReverseKL || p.mode == kJSD) {
    const acc dt = (t - r.st.mt) * p.inv_t, pt = dexp(dt - r.lzb), x = (dt - ds) - r.lzba;
    if (p.mode == kForwardKL) {
      g = p.c * (ps - pt);
      h = zero_where(pt, p.c * pt * (x - r.kl));
    } else if (p.mode == kReverseKL) {
      g = zero_where(ps, p.c * ps * (-x - r.kl));
      h = p.c * (pt - ps);
    } else {
      acc ls_m, lt_m;
      jsd_ratios(x, p, ls_m, lt_m);
      g = zero_where(ps, p.c * p.omb * ps * (ls_m - r.ks));
      h = zero_where(pt, p.c * p.beta * pt * (lt_m - r.kt));
    }
  }
  if (p.mode == kTargetProbs) {
    g = (ps * r.st.qs - t) * p.inv_t;
    h = (t == acc(0) && ds == -std::numeric_limits<acc>::infinity()) ? acc(0) : r.lza - ds;
  }
  if (p.hard) {
    const acc p1 = p.hard1 ? dexp(s - r.st.ms - r.lz1) : ps;
    g += p.hw * (p1 - p.ls / acc(V)) - (is_label ? p.hw * (1 - p.ls) : acc(0));
  }
}

// Each gradient row sums to 0 (the loss does not move when every logit of the row does), so
// the element at the row's maximum can be minus the sum of the others. Forms
// p_j (a_j - sum_k p_k a_k) (a reverse KL's student, a KL's teacher) cancel at an element
// that holds almost all the probability. Rest tallies the other elements; write() takes
// minus their sum where the maximum is unique, holds more than half of the probability
// (dominant), the others do not cancel among themselves (their sum is at least 1/4 of their
// magnitudes) and the sum is finite. The same rule as the CPU and Triton kernels.
template <typename acc>
struct Rest {
  acc sum = 0, magnitude = 0, n_max = 0;
  __device__ void add(acc x, acc m, acc g, int64_t j, int64_t* at) {
    if (x == m) {
      n_max += 1;
      *at = j;  // the only writer when the maximum is unique
    } else {
      sum += g;
      magnitude += fabs(g);
    }
  }
  // Block-wide; every thread must call it. at: the maximum's index (shared memory).
  template <typename scalar_t>
  __device__ void write(scalar_t* g, const int64_t* at, bool dominant, acc* smem) {
    const acc s = block_sum(sum, smem), mag = block_sum(magnitude, smem);
    const acc n = block_sum(n_max, smem);
    if (threadIdx.x == 0 && n == acc(1) && dominant && isfinite(s) && 4 * fabs(s) >= mag) {
      g[*at] = static_cast<scalar_t>(-s);  // block_sum's barriers order the loop's stores first
    }
  }
};

// ---- row_grads: pass 3, gradients into gs / gt (each may be null); nan on a nan row.
template <typename scalar_t, bool kPacked>
__device__ void row_grads(const scalar_t* s, const scalar_t* t, scalar_t* gs, scalar_t* gt,
                          int64_t V, int64_t y, bool nan_row, const RowSums<acc_t<scalar_t>>& r,
                          const Params<acc_t<scalar_t>>& p, acc_t<scalar_t>* smem,
                          int64_t* smem_at) {
  using acc = acc_t<scalar_t>;
  constexpr int P = kPacked ? Pack<scalar_t>::kSize : 1;
  const bool rest_s = gs != nullptr && (p.mode == kReverseKL || p.mode == kJSD);
  const bool rest_t = gt != nullptr && (p.mode == kForwardKL || p.mode == kJSD);
  Rest<acc> tally_s, tally_t;
  for_groups<scalar_t, kPacked>(s, t, V, [&](int64_t j0, const acc* xs, const acc* xt) {
    acc g[P], h[P];
#pragma unroll
    for (int k = 0; k < P; ++k) {
      element_grads(xs[k], xt[k], j0 + k == y, r, p, V, g[k], h[k]);
      g[k] *= p.grad_scale;
      h[k] *= p.grad_scale;
      if (nan_row) g[k] = h[k] = acc(NAN);
      if (rest_s) tally_s.add(xs[k], r.st.ms, g[k], j0 + k, &smem_at[0]);
      if (rest_t) tally_t.add(xt[k], r.st.mt, h[k], j0 + k, &smem_at[1]);
    }
    if (gs != nullptr) store_group<scalar_t, kPacked>(gs, j0, g);
    if (gt != nullptr) store_group<scalar_t, kPacked>(gt, j0, h);
  });
  constexpr acc kLn2 = acc(0.6931471805599453);  // the maximum's probability 1 / Z > 1/2
  if (rest_s) tally_s.write(gs, &smem_at[0], r.lza < kLn2 || (p.hard1 && r.lz1 < kLn2), smem);
  if (rest_t) tally_t.write(gt, &smem_at[1], r.lzb < kLn2, smem);
}

// An ignored row drops out of every term: loss 0, gradients 0.
template <typename scalar_t>
__device__ void zero_row(acc_t<scalar_t>* loss, scalar_t* gs, scalar_t* gt, int64_t V) {
  if (threadIdx.x == 0) *loss = 0;
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
    if (gs != nullptr) gs[j] = scalar_t(0);
    if (gt != nullptr) gt[j] = scalar_t(0);
  }
}

template <typename scalar_t, bool kPacked>
__global__ void distillation_kernel(const scalar_t* __restrict__ S, const scalar_t* __restrict__ T_,
                                    const int64_t* __restrict__ labels,
                                    acc_t<scalar_t>* __restrict__ loss, scalar_t* __restrict__ GS,
                                    scalar_t* __restrict__ GT, int64_t V,
                                    Params<acc_t<scalar_t>> p) {
  using acc = acc_t<scalar_t>;
  __shared__ State<acc> smem_state[kMaxWarps];
  __shared__ acc smem_sum[kMaxWarps];
  __shared__ int64_t smem_at[2];  // the row maxima's index, when unique (student, teacher)
  const int64_t row = blockIdx.x, base = row * V;
  const scalar_t* s = S + base;
  const scalar_t* t = p.mode == kNone ? nullptr : T_ + base;
  scalar_t* gs = GS != nullptr ? GS + base : nullptr;
  scalar_t* gt = GT != nullptr ? GT + base : nullptr;
  const int64_t label = p.has_labels ? labels[row] : 0;
  if (p.has_labels && label == p.ignore_index) return zero_row(loss + row, gs, gt, V);
  const bool bad = p.hard && (label < 0 || label >= V);
  const int64_t y = p.hard && !bad ? label : -1;

  RowSums<acc> r;
  r.st = row_state<scalar_t, kPacked>(s, t, V, p, smem_state);
  const acc ninf = -std::numeric_limits<acc>::infinity();
  const bool teacher = p.mode == kForwardKL || p.mode == kReverseKL || p.mode == kJSD;
  const bool nan_row = bad || r.st.ms == ninf || (teacher && r.st.mt == ninf);
  r.lza = dlog(r.st.za);
  r.lzb = dlog(r.st.zb);
  r.lzba = dlog(r.st.zb / r.st.za);
  r.lz1 = p.hard1 ? dlog(r.st.z1) : r.lza;
  r.kl = p.mode == kReverseKL ? r.st.w / r.st.za + r.lzba : r.st.w / r.st.zb - r.lzba;
  r.ks = r.kt = 0;
  if (p.mode == kJSD) jsd_sums<scalar_t, kPacked>(s, t, V, p, r, smem_sum);
  if (threadIdx.x == 0) {
    const acc s_y = y >= 0 ? static_cast<acc>(s[y]) : acc(0);
    loss[row] = nan_row ? acc(NAN) : row_loss(r, p, s_y, V);
  }
  if (gs != nullptr || gt != nullptr) {
    row_grads<scalar_t, kPacked>(s, t, gs, gt, V, y, nan_row, r, p, smem_sum, smem_at);
  }
}

// x and out may be the same buffer (the in-place op): no __restrict__ on them.
template <typename scalar_t>
__global__ void scale_grad_kernel(const acc_t<scalar_t>* __restrict__ grad, const scalar_t* x,
                                  scalar_t* out, int64_t V) {
  using acc = acc_t<scalar_t>;
  const int64_t row = blockIdx.x;
  const acc g = grad[row];
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
    const acc v = static_cast<acc>(x[row * V + j]);
    // an exact zero stays zero (an ignored row, even under an inf upstream gradient)
    out[row * V + j] = static_cast<scalar_t>(v == acc(0) ? acc(0) : g * v);
  }
}

int threads_for(int64_t V) { return V >= 32768 ? 1024 : V >= 8192 ? 512 : V >= 2048 ? 256 : 128; }

template <typename acc>
Params<acc> params_of(const DistillationSettings& st, bool has_labels) {
  Params<acc> p;
  p.inv_t = acc(1.0 / st.temperature);
  p.c = acc(st.soft_weight * st.temperature);
  p.c_t = acc(st.soft_weight * st.temperature * st.temperature);
  p.hw = acc(st.hard_weight);
  p.ls = acc(st.label_smoothing);
  p.beta = acc(st.beta);
  p.omb = acc(1.0 - st.beta);
  const bool jsd = st.beta > 0 && st.beta < 1;
  p.log_b = jsd ? acc(std::log(st.beta)) : acc(0);
  p.log_1b = jsd ? acc(std::log1p(-st.beta)) : acc(0);
  p.grad_scale = acc(st.grad_scale);
  p.ignore_index = st.ignore_index;
  p.mode = st.soft == SoftTarget::kTargetProbs ? kTargetProbs
           : st.soft == SoftTarget::kNone      ? kNone
           : st.beta == 0                      ? kForwardKL
           : st.beta == 1                      ? kReverseKL
                                               : kJSD;
  p.hard = st.hard;
  p.hard1 = st.hard && st.temperature != 1.0;
  p.smooth = st.hard && st.label_smoothing != 0;
  p.mirror = st.beta > 0.5;
  p.has_labels = has_labels;
  return p;
}

}  // namespace

void distillation_rows_into(const DistillationSettings& st, const DistillationTensors& c) {
  if (c.rows == 0) return;
  TORCH_CHECK(c.rows <= std::numeric_limits<int32_t>::max(), st.op, ": too many rows: ", c.rows);
  PK_DISPATCH_FLOATING(c.logits.scalar_type(), "distillation_cuda", [&] {
    using acc = acc_t<scalar_t>;
    const Params<acc> p = params_of<acc>(st, c.labels.defined());
    const scalar_t* ps = c.logits.const_data_ptr<scalar_t>();
    const scalar_t* pt = c.teacher.defined() ? c.teacher.const_data_ptr<scalar_t>() : nullptr;
    const int64_t* pl = c.labels.defined() ? c.labels.const_data_ptr<int64_t>() : nullptr;
    scalar_t* pgs = st.grad_logits ? c.grad_logits.data_ptr<scalar_t>() : nullptr;
    scalar_t* pgt = st.grad_teacher ? c.grad_teacher.data_ptr<scalar_t>() : nullptr;
    auto fits = [&](const void* x) { return x == nullptr || packable<scalar_t>(x, c.V); };
    const bool packed = fits(ps) && fits(pt) && fits(pgs) && fits(pgt);
    const auto stream = at::cuda::getCurrentCUDAStream();
    const dim3 grid(static_cast<unsigned>(c.rows));
    const int threads = threads_for(c.V);
    acc* loss = c.loss.data_ptr<acc>();
    if (packed) {
      distillation_kernel<scalar_t, true>
          <<<grid, threads, 0, stream>>>(ps, pt, pl, loss, pgs, pgt, c.V, p);
    } else {
      distillation_kernel<scalar_t, false>
          <<<grid, threads, 0, stream>>>(ps, pt, pl, loss, pgs, pgt, c.V, p);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

namespace {

// Launches the kernel over every row (labels are not read on the host: that would
// synchronise).
std::tuple<at::Tensor, at::Tensor, at::Tensor> distillation_rows(const DistillationSettings& st,
                                                                 const at::Tensor& logits,
                                                                 const at::Tensor& teacher,
                                                                 const at::Tensor& labels) {
  c10::cuda::CUDAGuard guard(logits.device());
  const DistillationTensors c = distillation_tensors(st, logits, teacher, labels);
  distillation_rows_into(st, c);
  return {c.loss, c.grad_logits, c.grad_teacher};
}

struct Rows {
  static std::tuple<at::Tensor, at::Tensor, at::Tensor> run(const DistillationSettings& st,
                                                            const at::Tensor& logits,
                                                            const at::Tensor& teacher,
                                                            const at::Tensor& labels) {
    return distillation_rows(st, logits, teacher, labels);
  }
};
using Ops = DistillationOps<at::kCUDA, Rows>;

// out = grad * x row by row; x and out are contiguous, out may be x.
void scale_grad(const at::Tensor& grad_, const at::Tensor& x, const at::Tensor& out) {
  const int64_t V = x.size(-1), rows = V == 0 ? 0 : x.numel() / V;
  if (rows == 0) return;
  TORCH_CHECK(rows <= std::numeric_limits<int32_t>::max(), "pykernels: too many rows: ", rows);
  PK_DISPATCH_FLOATING(x.scalar_type(), "distillation_scale_grad_cuda", [&] {
    using acc = acc_t<scalar_t>;
    const auto grad = grad_.to(c10::CppTypeToScalarType<acc>::value).contiguous();
    scale_grad_kernel<scalar_t>
        <<<static_cast<unsigned>(rows), threads_for(V), 0, at::cuda::getCurrentCUDAStream()>>>(
            grad.const_data_ptr<acc>(), x.const_data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), V);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

at::Tensor distillation_scale_grad_cuda(const at::Tensor& grad, const at::Tensor& x_) {
  check_scale_grad("pykernels::distillation_scale_grad", grad, x_, at::kCUDA);
  c10::cuda::CUDAGuard guard(x_.device());
  const auto x = x_.contiguous();
  auto out = at::empty_like(x);
  scale_grad(grad, x, out);
  return out;
}

void distillation_scale_grad_inplace_cuda(const at::Tensor& grad, const at::Tensor& x) {
  check_scale_grad_inplace("pykernels::distillation_scale_grad_inplace", grad, x, at::kCUDA);
  c10::cuda::CUDAGuard guard(x.device());
  scale_grad(grad, x, x);
}

}  // namespace
}  // namespace cuda
}  // namespace pykernels

TORCH_LIBRARY_IMPL(pykernels, CUDA, m) {
  using namespace pykernels::cuda;
  m.impl("distillation_loss", &Ops::distillation_loss);
  m.impl("cross_entropy", &Ops::cross_entropy);
  m.impl("soft_target_cross_entropy", &Ops::soft_target_cross_entropy);
  m.impl("distillation_scale_grad", &distillation_scale_grad_cuda);
  m.impl("distillation_scale_grad_inplace", &distillation_scale_grad_inplace_cuda);
}
