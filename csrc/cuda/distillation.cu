// CUDA kernels of the distillation family: one block per row (V up to 262144 and more),
// 16-byte packed loads when the rows allow it, int64 offsets, fp32 accumulation.
//
//   pass 1  every thread keeps an online softmax state of its slice of the row (maxima of
//           the student and teacher logits, sums of exp((x - max) / T), the KL numerators,
//           the hard term's sum at T = 1), rescaled when a maximum grows; the states are
//           merged by a fixed shuffle tree and then across warps (deterministic);
//   pass 2  (0 < beta < 1 only) KL(p_S || m) and KL(p_T || m), log m by logaddexp;
//   pass 3  the gradient of the row's loss, so that the backward only scales it.
// A label outside [0, V) other than ignore_index gives a nan loss and gradient row: the
// kernel never reads out of bounds and never synchronises with the host to report it.
#include <torch/library.h>

#include <cmath>
#include <limits>

#include "common/cuda_utils.cuh"
#include "common/distillation_args.h"

namespace pykernels {
namespace cuda {
namespace {

constexpr int kMaxWarps = 32;

// Math in the accumulation type (expf for float, exp for double, ...).
__device__ __forceinline__ float dexp(float x) { return expf(x); }
__device__ __forceinline__ double dexp(double x) { return exp(x); }
__device__ __forceinline__ float dlog(float x) { return logf(x); }
__device__ __forceinline__ double dlog(double x) { return log(x); }
__device__ __forceinline__ float dlog1p(float x) { return log1pf(x); }
__device__ __forceinline__ float dexpm1(float x) { return expm1f(x); }
__device__ __forceinline__ double dexpm1(double x) { return expm1(x); }

// exp(a) - exp(b), given ea = exp(a) and eb = exp(b): eb expm1(a - b) where a and b are
// close (no cancellation), ea - eb elsewhere (expm1 may overflow against an eb of 0).
template <typename acc>
__device__ __forceinline__ acc exp_diff(acc a, acc b, acc ea, acc eb) {
  return fabs(a - b) < acc(1) ? eb * dexpm1(a - b) : ea - eb;
}
__device__ __forceinline__ double dlog1p(double x) { return log1p(x); }

// Plain-value copy of the settings a kernel needs.
template <typename acc>
struct Params {
  acc invT, T, sw, hw, beta, omb, log_b, log_1b, ls;
  int64_t ignore_index;
  bool soft, hard, probs, share1, has_labels;
  int mode;  // 0 KL(p_T || p_S), 1 KL(p_S || p_T), 2 generalised JSD
};

// Online statistics of (a slice of) a row, relative to the maxima ms, mt:
//   za = sum exp(ds), zb = sum exp(dt), wf = sum exp(dt) (dt - ds), wr = sum exp(ds) (ds - dt),
//   qs = sum q, wq = sum q ds, z1 = sum exp(s - ms), ss = sum s;  ds = (s - ms) / T, dt = (t - mt) / T;
//   d = sum (exp(dt) - exp(ds)) by exp_diff = zb - za without the cancellation (log(zb / za) = log1p(d / za)).
template <typename acc>
struct State {
  acc ms, mt, za, zb, wf, wr, qs, wq, z1, ss, d;
};

template <typename acc>
__device__ __forceinline__ State<acc> empty_state(bool soft) {
  const acc ninf = -std::numeric_limits<acc>::infinity();
  // Without a teacher mt stays 0 so that its shift is 0, never inf - inf.
  return {ninf, soft ? ninf : acc(0), 0, 0, 0, 0, 0, 0, 0, 0, 0};
}

// Re-expresses st relative to larger maxima (ms_new >= st.ms, mt_new >= st.mt).
template <typename acc>
__device__ __forceinline__ void shift(State<acc>& st, acc ms_new, acc mt_new, acc invT) {
  if (st.ms == -std::numeric_limits<acc>::infinity()) {  // empty: every sum is 0
    st.ms = ms_new;
    st.mt = mt_new;
    return;
  }
  if (ms_new == st.ms && mt_new == st.mt) return;
  const acc dsh = (ms_new - st.ms) * invT, dth = (mt_new - st.mt) * invT;
  const acc as = dexp(-dsh), at = dexp(-dth);
  st.wf = at * (st.wf + st.zb * (dsh - dth));
  st.wr = as * (st.wr + st.za * (dth - dsh));
  st.wq = st.wq - st.qs * dsh;
  // zb - za rescaled: at zb - as za = at (zb - za) + (at - as) za
  st.d = at * st.d + exp_diff(-dth, -dsh, at, as) * st.za;
  st.za *= as;
  st.zb *= at;
  st.z1 *= dexp(st.ms - ms_new);
  st.ms = ms_new;
  st.mt = mt_new;
}

// Symmetric in a and b (so every lane of a shuffle tree gets the same bits).
template <typename acc>
__device__ __forceinline__ State<acc> merge(State<acc> a, State<acc> b, acc invT) {
  const acc ms = a.ms > b.ms ? a.ms : b.ms, mt = a.mt > b.mt ? a.mt : b.mt;
  shift(a, ms, mt, invT);
  shift(b, ms, mt, invT);
  return {ms, mt, a.za + b.za, a.zb + b.zb, a.wf + b.wf, a.wr + b.wr, a.qs + b.qs, a.wq + b.wq,
          a.z1 + b.z1, a.ss + b.ss, a.d + b.d};
}

template <typename acc>
__device__ __forceinline__ State<acc> shfl_state(const State<acc>& s, int offset) {
  auto f = [&](acc v) { return __shfl_xor_sync(0xffffffffu, v, offset); };
  return {f(s.ms), f(s.mt), f(s.za), f(s.zb), f(s.wf), f(s.wr), f(s.qs), f(s.wq), f(s.z1), f(s.ss), f(s.d)};
}

template <typename acc>
__device__ __forceinline__ State<acc> warp_merge(State<acc> st, acc invT) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) st = merge(st, shfl_state(st, offset), invT);
  return st;
}

// The whole block's state, on every thread. smem: kMaxWarps states.
template <typename acc>
__device__ State<acc> block_merge(State<acc> st, acc invT, bool soft, State<acc>* smem) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, nwarps = blockDim.x / kWarp;
  st = warp_merge(st, invT);
  if (lane == 0) smem[warp] = st;
  __syncthreads();
  if (warp == 0) {
    st = warp_merge(lane < nwarps ? smem[lane] : empty_state<acc>(soft), invT);
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

// f(j0, n, s[], t[]) for each group of n consecutive elements this thread owns: 16-byte packs
// when kPacked, single elements otherwise. t is read only when given.
template <typename scalar_t, bool kPacked, typename F>
__device__ __forceinline__ void for_groups(const scalar_t* s, const scalar_t* t, int64_t V, F f) {
  using acc = acc_t<scalar_t>;
  constexpr int P = kPacked ? Pack<scalar_t>::kSize : 1;
  for (int64_t j = int64_t(threadIdx.x) * P; j < V; j += int64_t(blockDim.x) * P) {
    acc xs[P], xt[P];
    if constexpr (kPacked) {
      const Pack<scalar_t> ps = *reinterpret_cast<const Pack<scalar_t>*>(s + j);
#pragma unroll
      for (int k = 0; k < P; ++k) xs[k] = static_cast<acc>(ps.v[k]);
      if (t != nullptr) {
        const Pack<scalar_t> pt = *reinterpret_cast<const Pack<scalar_t>*>(t + j);
#pragma unroll
        for (int k = 0; k < P; ++k) xt[k] = static_cast<acc>(pt.v[k]);
      }
    } else {
      xs[0] = static_cast<acc>(s[j]);
      if (t != nullptr) xt[0] = static_cast<acc>(t[j]);
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

// ls_m = log p_S - log m, lt_m = log p_T - log m for m = beta p_T + (1 - beta) p_S, from
// x = log p_T - log p_S alone (formed without the log zb - log za cancellation). Near x = 0
// (close distributions, where log m - log p_S cancelled) log(m / p_S) = log1p(beta expm1(x)).
// Elsewhere log m is the larger of log(beta p_T), log((1 - beta) p_S) plus
// e = log1p(exp(-|d|)), d = x + log(beta / (1 - beta)), and each ratio is a difference taken
// exactly (log p_S - logaddexp lost log(1 - beta) below p_S's rounding; see the CPU kernel).
template <typename acc, typename P>
__device__ __forceinline__ void jsd_logs(acc x, const P& p, acc& ls_m, acc& lt_m) {
  if (fabs(x) < acc(1) && p.beta > acc(0.5)) {  // the mirror image, from omb = 1 - beta in float64
    const acc v = dlog1p(p.omb * dexpm1(-x));    // log(m / p_T): a float32 beta of 1 - 1e-7 is 1
    ls_m = -v - x;
    lt_m = -v;
  } else if (fabs(x) < acc(1)) {
    const acc u = dlog1p(acc(p.beta) * dexpm1(x));  // log(m / p_S)
    ls_m = -u;
    lt_m = x - u;
  } else {
    const acc lb = acc(p.log_b), l1b = acc(p.log_1b), d = x + (lb - l1b);
    const acc e = dlog1p(dexp(-fabs(d)));
    ls_m = (d >= acc(0) ? -x - lb : -l1b) - e;
    lt_m = (d >= acc(0) ? -lb : x - l1b) - e;
  }
}

// Each gradient row sums to 0 (the loss is invariant to a shift of the logits), so the
// element at a row's maximum can be minus the sum of the others: where the maximum is
// unique (n_max == 1), holds more than half of the probability (dominant: there its own
// formula cancels) and the others do not cancel among themselves; a NaN or inf keeps the
// element's own formula. The same rule as the CPU (take_rest) and Triton (_take_rest) kernels.
template <typename acc>
__device__ __forceinline__ bool take_rest(acc n_max, bool dominant, acc rest, acc rest_abs) {
  return n_max == acc(1) && dominant && isfinite(rest) && 4 * fabs(rest) >= rest_abs;
}

// Element j (logit x, gradient g) into take_rest's sums over the non-maximal elements, or,
// at the row maximum m, counted and its index kept.
template <typename acc>
__device__ __forceinline__ void tally(acc x, acc m, acc g, int64_t j, acc& n, acc& rest, acc& rest_abs,
                                      int64_t& at) {
  if (x == m) {
    n += 1;
    at = j;
  } else {
    rest += g;
    rest_abs += fabs(g);
  }
}

template <typename scalar_t, bool kPacked>
__global__ void distill_kernel(const scalar_t* __restrict__ S, const scalar_t* __restrict__ T_,
                               const int64_t* __restrict__ labels, acc_t<scalar_t>* __restrict__ loss,
                               scalar_t* __restrict__ GS, scalar_t* __restrict__ GT, int64_t V,
                               Params<acc_t<scalar_t>> p) {
  using acc = acc_t<scalar_t>;
  constexpr int P = kPacked ? Pack<scalar_t>::kSize : 1;
  __shared__ State<acc> smem_state[kMaxWarps];
  __shared__ acc smem_sum[kMaxWarps];
  __shared__ int64_t smem_max_at[2];  // the row maxima's index, when unique (student, teacher)
  const int64_t row = blockIdx.x;
  const int64_t base = row * V;
  const scalar_t* s = S + base;
  const scalar_t* t = (p.soft || p.probs) ? T_ + base : nullptr;
  scalar_t* gs = GS ? GS + base : nullptr;
  scalar_t* gt = GT ? GT + base : nullptr;
  const int64_t lab = p.has_labels ? labels[row] : 0;
  if (p.has_labels && lab == p.ignore_index) {  // drops out of every term
    if (threadIdx.x == 0) loss[row] = acc(0);
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
      if (gs) gs[j] = scalar_t(0);
      if (gt) gt[j] = scalar_t(0);
    }
    return;
  }
  const bool bad = p.hard && (lab < 0 || lab >= V);
  const int64_t y = (p.hard && !bad) ? lab : 0;

  // ---- pass 1
  State<acc> st = empty_state<acc>(p.soft);
  for_groups<scalar_t, kPacked>(s, t, V, [&](int64_t, const acc* xs, const acc* xt) {
    acc ms = st.ms, mt = st.mt;
#pragma unroll
    for (int k = 0; k < P; ++k) {
      ms = xs[k] > ms ? xs[k] : ms;
      if (p.soft) mt = xt[k] > mt ? xt[k] : mt;
    }
    shift(st, ms, mt, p.invT);
#pragma unroll
    for (int k = 0; k < P; ++k) {
      const acc ds = (xs[k] - ms) * p.invT, e = dexp(ds);
      st.za += e;
      if (p.soft) {
        const acc dt = (xt[k] - mt) * p.invT, f = dexp(dt);
        st.zb += f;
        st.wf += f * (dt - ds);
        st.wr += e * (ds - dt);
        st.d += exp_diff(dt, ds, f, e);
      }
      if (p.probs) {
        st.qs += xt[k];
        st.wq += xt[k] * ds;
      }
      if (p.hard) {
        if (!p.share1) st.z1 += dexp(xs[k] - ms);
        st.ss += xs[k];
      }
    }
  });
  st = block_merge(st, p.invT, p.soft, smem_state);
  const acc ms = st.ms, mt = st.mt;
  const acc lza = dlog(st.za), lzb = p.soft ? dlog(st.zb) : acc(0);
  // log(zb / za): log1p(d / za) for close distributions (zb / za in [1/2, 2]), where
  // lzb - lza cancels; elsewhere d cancels and the log of the ratio is better (the CPU
  // kernel's log_ratio; docs/distillation.md, "Precision for close distributions")
  const acc ratio = st.zb / st.za;
  const acc lzba = !p.soft ? acc(0) : (ratio >= acc(0.5) && ratio <= acc(2)) ? dlog1p(st.d / st.za) : dlog(ratio);
  const acc klf = p.soft ? st.wf / st.zb - lzba : acc(0);
  const acc klr = p.soft ? st.wr / st.za + lzba : acc(0);
  const acc lz1 = p.share1 ? lza : dlog(st.z1);

  // ---- pass 2 (generalised JSD)
  acc ks = 0, kt = 0;
  if (p.soft && p.mode == 2) {
    for_groups<scalar_t, kPacked>(s, t, V, [&](int64_t, const acc* xs, const acc* xt) {
#pragma unroll
      for (int k = 0; k < P; ++k) {
        const acc ds = (xs[k] - ms) * p.invT, dt = (xt[k] - mt) * p.invT;
        acc ls_m, lt_m;
        jsd_logs((dt - ds) - lzba, p, ls_m, lt_m);
        ks += dexp(ds - lza) * ls_m;
        kt += dexp(dt - lzb) * lt_m;
      }
    });
    ks = block_sum(ks, smem_sum);
    kt = block_sum(kt, smem_sum);
  }

  if (threadIdx.x == 0) {
    acc l = 0;
    if (p.soft) {
      const acc d = p.mode == 0 ? klf : p.mode == 1 ? klr : p.beta * kt + p.omb * ks;
      l += p.sw * p.T * p.T * d;
    }
    if (p.probs) l += st.qs * lza - st.wq;
    if (p.hard) {
      const acc nll = lz1 + (ms - static_cast<acc>(s[y]));
      const acc smooth = lz1 + ms - st.ss / acc(V);
      // ls = 0: no smoothing term at all (a -inf logit makes it inf, and 0 * inf = nan)
      l += p.hw * ((1 - p.ls) * nll + (p.ls != acc(0) ? p.ls * smooth : acc(0)));
      if (bad) l = acc(NAN);
    }
    loss[row] = l;
  }

  // ---- pass 3: gradients
  if (gs == nullptr && gt == nullptr) return;
  const acc c = p.sw * p.T;
  const bool teacher_logits = gt != nullptr && p.soft;  // not probabilities: the rows sum to 0
  acc rest_s = 0, abs_s = 0, n_s = 0, rest_t = 0, abs_t = 0, n_t = 0;  // over the non-maximal elements
  for_groups<scalar_t, kPacked>(s, t, V, [&](int64_t j0, const acc* xs, const acc* xt) {
    acc g[P], h[P];
#pragma unroll
    for (int k = 0; k < P; ++k) {
      const acc ds = (xs[k] - ms) * p.invT, lps = ds - lza, ps = dexp(lps);
      acc gk = 0, hk = 0;
      if (p.soft) {
        const acc lpt = (xt[k] - mt) * p.invT - lzb, pt = dexp(lpt);
        if (p.mode == 0) {
          gk = c * (ps - pt);
          hk = c * pt * (lpt - lps - klf);
        } else if (p.mode == 1) {
          gk = c * ps * (lps - lpt - klr);
          hk = c * (pt - ps);
        } else {
          acc ls_m, lt_m;
          jsd_logs(((xt[k] - mt) * p.invT - ds) - lzba, p, ls_m, lt_m);
          gk = c * p.omb * ps * (ls_m - ks);
          hk = c * p.beta * pt * (lt_m - kt);
        }
      }
      if (p.probs) {
        gk = (ps * st.qs - xt[k]) * p.invT;
        hk = lza - ds;
      }
      if (p.hard) {
        const acc p1 = p.share1 ? ps : dexp(xs[k] - ms - lz1);
        gk += p.hw * (p1 - p.ls / acc(V));
        if (j0 + k == y) gk -= p.hw * (1 - p.ls);
        if (bad) gk = acc(NAN);
      }
      g[k] = gk;
      h[k] = hk;
      tally(xs[k], ms, gk, j0 + k, n_s, rest_s, abs_s, smem_max_at[0]);
      if (teacher_logits) tally(xt[k], mt, hk, j0 + k, n_t, rest_t, abs_t, smem_max_at[1]);
    }
    if (gs) store_group<scalar_t, kPacked>(gs, j0, g);
    if (gt) store_group<scalar_t, kPacked>(gt, j0, h);
  });
  // block_sum's barriers order the stores above before the maximum is written again
  auto write_max = [&](scalar_t* g, int which, acc rest, acc rest_abs, acc n, bool dominant) {
    rest = block_sum(rest, smem_sum);
    rest_abs = block_sum(rest_abs, smem_sum);
    n = block_sum(n, smem_sum);
    if (threadIdx.x == 0 && take_rest(n, dominant, rest, rest_abs)) g[smem_max_at[which]] = scalar_t(-rest);
  };
  constexpr acc kLn2 = acc(0.6931471805599453);
  // the maximum's probability: 1 / za (1 / zb for the teacher), or 1 / z1 for the hard term's softmax
  if (gs) write_max(gs, 0, rest_s, abs_s, n_s, lza < kLn2 || (p.hard && lz1 < kLn2));
  if (teacher_logits) write_max(gt, 1, rest_t, abs_t, n_t, lzb < kLn2);
}

// x and out may be the same buffer (the in-place op): no __restrict__ on them.
template <typename scalar_t>
__global__ void scale_grad_kernel(const acc_t<scalar_t>* __restrict__ grad, const scalar_t* x, scalar_t* out,
                                  int64_t V) {
  using acc = acc_t<scalar_t>;
  const int64_t row = blockIdx.x;
  const acc g = grad[row];
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
    const acc v = static_cast<acc>(x[row * V + j]);
    // an exact zero stays zero (an ignored row, even under an inf upstream gradient)
    out[row * V + j] = static_cast<scalar_t>(v == acc(0) ? acc(0) : g * v);
  }
}

int threads_for(int64_t V) {
  return V >= 32768 ? 1024 : V >= 8192 ? 512 : V >= 2048 ? 256 : 128;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> run_rows(const DistillSettings& st, const at::Tensor& s_,
                                                        const at::Tensor& t_, const at::Tensor& labels_) {
  c10::cuda::CUDAGuard guard(s_.device());
  const DistillCall c = distill_call(st, s_, t_, labels_);
  const at::Tensor &s = c.s, &t = c.t, &labels = c.labels, &out = c.loss, &gs = c.grad_s, &gt = c.grad_t;
  const int64_t V = c.V, rows = c.rows;
  if (rows == 0) return {out, gs, gt};
  TORCH_CHECK(rows <= std::numeric_limits<int32_t>::max(), "pykernels: too many rows: ", rows);
  PK_DISPATCH_FLOATING(s.scalar_type(), "distillation_cuda", [&] {
    using acc = acc_t<scalar_t>;
    Params<acc> p;
    p.invT = acc(1.0 / st.temperature);
    p.T = acc(st.temperature);
    p.sw = acc(st.soft_weight);
    p.hw = acc(st.hard_weight);
    p.beta = acc(st.beta);
    p.omb = acc(1.0 - st.beta);
    const bool jsd = st.beta > 0 && st.beta < 1;
    p.log_b = jsd ? acc(std::log(st.beta)) : acc(0);
    p.log_1b = jsd ? acc(std::log1p(-st.beta)) : acc(0);
    p.ls = acc(st.label_smoothing);
    p.ignore_index = st.ignore_index;
    p.soft = st.soft;
    p.hard = st.hard;
    p.probs = st.probs;
    p.share1 = st.temperature == 1.0;
    p.has_labels = labels.defined();
    p.mode = st.beta == 0 ? 0 : st.beta == 1 ? 1 : 2;
    const scalar_t* ps = s.const_data_ptr<scalar_t>();
    const scalar_t* pt = t.defined() ? t.const_data_ptr<scalar_t>() : nullptr;
    const int64_t* pl = labels.defined() ? labels.const_data_ptr<int64_t>() : nullptr;
    scalar_t* pgs = st.grad_s ? gs.data_ptr<scalar_t>() : nullptr;
    scalar_t* pgt = st.grad_t ? gt.data_ptr<scalar_t>() : nullptr;
    const bool packed = packable<scalar_t>(ps, V) && (pt == nullptr || packable<scalar_t>(pt, V)) &&
                        (pgs == nullptr || packable<scalar_t>(pgs, V)) &&
                        (pgt == nullptr || packable<scalar_t>(pgt, V));
    const auto stream = at::cuda::getCurrentCUDAStream();
    const int threads = threads_for(V);
    if (packed) {
      distill_kernel<scalar_t, true><<<rows, threads, 0, stream>>>(ps, pt, pl, out.data_ptr<acc>(), pgs, pgt, V, p);
    } else {
      distill_kernel<scalar_t, false><<<rows, threads, 0, stream>>>(ps, pt, pl, out.data_ptr<acc>(), pgs, pgt, V, p);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, gs, gt};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> distillation_loss_cuda(
    const at::Tensor& student, const at::Tensor& teacher, const c10::optional<at::Tensor>& labels,
    double temperature, double soft_weight, double hard_weight, double beta, int64_t ignore_index,
    double label_smoothing, bool grad_student, bool grad_teacher) {
  const char* op = "pykernels::distillation_loss";
  const bool has_labels = labels.has_value() && labels->defined();
  const at::Tensor y = has_labels ? *labels : at::Tensor();
  const auto st = kd_settings(op, at::kCUDA, student, teacher, has_labels, y, temperature, soft_weight, hard_weight,
                              beta, ignore_index, label_smoothing, grad_student, grad_teacher);
  return run_rows(st, student, teacher, y);
}

std::tuple<at::Tensor, at::Tensor> cross_entropy_cuda(const at::Tensor& logits, const at::Tensor& labels,
                                                      int64_t ignore_index, double label_smoothing,
                                                      bool grad_logits) {
  const char* op = "pykernels::cross_entropy";
  const auto st = ce_settings(op, at::kCUDA, logits, labels, ignore_index, label_smoothing, grad_logits);
  auto [loss, g, unused] = run_rows(st, logits, at::Tensor(), labels);
  return {loss, g};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> soft_target_cross_entropy_cuda(
    const at::Tensor& logits, const at::Tensor& target, double temperature, bool grad_logits,
    bool grad_target) {
  const char* op = "pykernels::soft_target_cross_entropy";
  const auto st = soft_target_settings(op, at::kCUDA, logits, target, temperature, grad_logits, grad_target);
  return run_rows(st, logits, target, at::Tensor());
}

// out = grad * x row by row; x and out are contiguous, out may be x.
void scale_rows(const at::Tensor& grad_, const at::Tensor& x, const at::Tensor& out) {
  const int64_t V = x.size(-1), rows = V == 0 ? 0 : x.numel() / V;
  if (rows == 0) return;
  TORCH_CHECK(rows <= std::numeric_limits<int32_t>::max(), "pykernels: too many rows: ", rows);
  PK_DISPATCH_FLOATING(x.scalar_type(), "distillation_scale_grad_cuda", [&] {
    using acc = acc_t<scalar_t>;
    const auto grad = grad_.to(c10::CppTypeToScalarType<acc>::value).contiguous();
    scale_grad_kernel<scalar_t><<<rows, threads_for(V), 0, at::cuda::getCurrentCUDAStream()>>>(
        grad.const_data_ptr<acc>(), x.const_data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), V);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

at::Tensor distillation_scale_grad_cuda(const at::Tensor& grad, const at::Tensor& x_) {
  check_scale_grad("pykernels::distillation_scale_grad", grad, x_, at::kCUDA);
  c10::cuda::CUDAGuard guard(x_.device());
  const auto x = x_.contiguous();
  auto out = at::empty_like(x);
  scale_rows(grad, x, out);
  return out;
}

void distillation_scale_grad_inplace_cuda(const at::Tensor& grad, const at::Tensor& x) {
  check_scale_grad_inplace("pykernels::distillation_scale_grad_", grad, x, at::kCUDA);
  c10::cuda::CUDAGuard guard(x.device());
  scale_rows(grad, x, x);
}

}  // namespace
}  // namespace cuda
}  // namespace pykernels

TORCH_LIBRARY_IMPL(pykernels, CUDA, m) {
  using namespace pykernels::cuda;
  m.impl("distillation_loss", &distillation_loss_cuda);
  m.impl("cross_entropy", &cross_entropy_cuda);
  m.impl("soft_target_cross_entropy", &soft_target_cross_entropy_cuda);
  m.impl("distillation_scale_grad", &distillation_scale_grad_cuda);
  m.impl("distillation_scale_grad_", &distillation_scale_grad_inplace_cuda);
}
