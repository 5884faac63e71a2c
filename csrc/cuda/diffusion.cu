// CUDA kernels of the diffusion family: add_noise / velocity / predicted x0 ("mix"), the
// training loss and the DDPM / DDIM sampler steps, forward and backward, one pass each.
//
// Tensors are [N, D] (N samples). Block b handles chunk c = b % C of sample n = b / C
// (C = ceil(D / kChunk)); each thread computes the sample's coefficients from the
// alphas_cumprod table on the device (two cached reads; no host sync, CUDA-graph
// capturable), then handles kUnroll coalesced elements. Per-sample sums are reduced per
// block in a fixed order into [N, C] partials that at::sum adds: deterministic.
// Timesteps are clamped into the table (reading them back to check would sync); the
// CPU backend and the Python API raise on out-of-range CPU timesteps instead.
#include <torch/library.h>

#include "common/cuda_utils.cuh"
#include "common/diffusion_args.h"

namespace pykernels {
namespace cuda {
namespace {

using namespace pykernels::diffusion;

constexpr int kThreads = 256;
constexpr int kUnroll = 8;
constexpr int64_t kChunk = int64_t(kThreads) * kUnroll;

struct Geometry {
  int64_t N, D, C;
  int64_t blocks() const { return N * C; }
};

inline Geometry geometry(const at::Tensor& x) {
  const int64_t N = x.size(0), D = N == 0 ? 0 : x.numel() / N;
  return {N, D, std::max<int64_t>(1, (D + kChunk - 1) / kChunk)};
}

// f(i) for this thread's elements i (offsets within sample n) of block blockIdx.x.
template <typename F>
__device__ __forceinline__ void for_elements(int64_t D, int64_t C, F f) {
  const int64_t c = int64_t(blockIdx.x) % C;
  const int64_t first = c * kChunk + threadIdx.x;
#pragma unroll
  for (int k = 0; k < kUnroll; ++k) {
    const int64_t i = first + int64_t(k) * kThreads;
    if (i < D) f(i);
  }
}

// Sum of v over the block in a fixed order; valid in thread 0.
template <typename acc>
__device__ __forceinline__ acc block_sum(acc v) {
  __shared__ acc warps[kThreads / kWarp];
  v = warp_sum(v);
  if (threadIdx.x % kWarp == 0) warps[threadIdx.x / kWarp] = v;
  __syncthreads();
  acc s = 0;
  if (threadIdx.x == 0) {
#pragma unroll
    for (int w = 0; w < kThreads / kWarp; ++w) s += warps[w];
  }
  return s;
}

__device__ __forceinline__ int64_t sample_index(int64_t C) { return int64_t(blockIdx.x) / C; }

// ------------------------------------------------------------------------------ kernels
template <typename scalar_t, typename out_t, typename acc = acc_t<scalar_t>>
__global__ void mix_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ y,
                           const int64_t* __restrict__ ts, const acc* __restrict__ tab, int64_t T,
                           out_t* __restrict__ out, int64_t D, int64_t C, int64_t kind) {
  const int64_t n = sample_index(C), o = n * D;
  const Mix<acc> k = mix_coefs<acc>(kind, alpha_at(tab, T, ts[n]));
  for_elements(D, C, [&](int64_t i) {
    out[o + i] = static_cast<out_t>(k.cx * static_cast<acc>(x[o + i]) + k.cy * static_cast<acc>(y[o + i]));
  });
}

template <typename scalar_t, typename grad_t, typename acc = acc_t<scalar_t>>
__global__ void mix_backward_kernel(const grad_t* __restrict__ g, const int64_t* __restrict__ ts,
                                    const acc* __restrict__ tab, int64_t T, scalar_t* __restrict__ gx,
                                    scalar_t* __restrict__ gy, int64_t D, int64_t C, int64_t kind) {
  const int64_t n = sample_index(C), o = n * D;
  const Mix<acc> k = mix_coefs<acc>(kind, alpha_at(tab, T, ts[n]));
  for_elements(D, C, [&](int64_t i) {
    const acc gv = static_cast<acc>(g[o + i]);
    gx[o + i] = static_cast<scalar_t>(k.cx * gv);
    gy[o + i] = static_cast<scalar_t>(k.cy * gv);
  });
}

template <typename scalar_t, typename acc = acc_t<scalar_t>>
__global__ void loss_kernel(const scalar_t* __restrict__ m, const scalar_t* __restrict__ x0,
                            const scalar_t* __restrict__ nz, const int64_t* __restrict__ ts,
                            const acc* __restrict__ tab, int64_t T, acc* __restrict__ elem,
                            acc* __restrict__ partial, int64_t D, int64_t C, int64_t prediction) {
  const int64_t n = sample_index(C), o = n * D;
  const Mix<acc> k = target_coefs<acc>(prediction, alpha_at(tab, T, ts[n]));
  acc s = 0;
  for_elements(D, C, [&](int64_t i) {
    const acc d = static_cast<acc>(m[o + i]) -
                  (k.cx * static_cast<acc>(x0[o + i]) + k.cy * static_cast<acc>(nz[o + i]));
    if (elem != nullptr) elem[o + i] = d * d;
    s += d * d;
  });
  s = block_sum(s);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

template <typename scalar_t, typename acc = acc_t<scalar_t>>
__global__ void loss_backward_kernel(const acc* __restrict__ g, bool elementwise,
                                     const scalar_t* __restrict__ m, const scalar_t* __restrict__ x0,
                                     const scalar_t* __restrict__ nz, const int64_t* __restrict__ ts,
                                     const acc* __restrict__ tab, int64_t T, scalar_t* __restrict__ gm,
                                     scalar_t* __restrict__ gx, scalar_t* __restrict__ gn, int64_t D,
                                     int64_t C, int64_t prediction) {
  const int64_t n = sample_index(C), o = n * D;
  const Mix<acc> k = target_coefs<acc>(prediction, alpha_at(tab, T, ts[n]));
  for_elements(D, C, [&](int64_t i) {
    const acc gv = elementwise ? g[o + i] : g[n];
    const acc d = static_cast<acc>(m[o + i]) -
                  (k.cx * static_cast<acc>(x0[o + i]) + k.cy * static_cast<acc>(nz[o + i]));
    const acc h = acc(2) * gv * d;
    // a null output is a gradient nobody asked for (uniform across the grid: no divergence)
    if (gm != nullptr) gm[o + i] = static_cast<scalar_t>(h);
    if (gx != nullptr) gx[o + i] = static_cast<scalar_t>(-k.cx * h);
    if (gn != nullptr) gn[o + i] = static_cast<scalar_t>(-k.cy * h);
  });
}

struct StepArgs {
  StepParams p;
  int64_t clip_mode;
  double clip_range;
};

template <typename scalar_t, typename acc = acc_t<scalar_t>>
__global__ void step_kernel(const scalar_t* __restrict__ m, const scalar_t* __restrict__ s,
                            const scalar_t* __restrict__ nz, const int64_t* __restrict__ ts,
                            const int64_t* __restrict__ prev, const acc* __restrict__ tab, int64_t T,
                            const acc* __restrict__ q, StepArgs A, scalar_t* __restrict__ out,
                            scalar_t* __restrict__ x0c, int64_t D, int64_t C) {
  const int64_t n = sample_index(C), o = n * D;
  const Step<acc> k = step_coefs_at<acc>(A.p, tab, T, ts[n], prev[n]);
  const acc lim = q != nullptr ? q[n] : acc(A.clip_range);
  const bool noisy = nz != nullptr && k.on != acc(0);  // DDPM t = 0, DDIM eta = 0: noise not read
  for_elements(D, C, [&](int64_t i) {
    acc c;
    acc r = step_element<acc>(k, A.clip_mode, lim, static_cast<acc>(s[o + i]), static_cast<acc>(m[o + i]), c);
    if (noisy) r += k.on * static_cast<acc>(nz[o + i]);
    out[o + i] = static_cast<scalar_t>(r);
    x0c[o + i] = static_cast<scalar_t>(c);
  });
}

template <typename scalar_t, typename acc = acc_t<scalar_t>>
__global__ void step_backward_kernel(const scalar_t* __restrict__ gp, const scalar_t* __restrict__ gx,
                                     const scalar_t* __restrict__ m, const scalar_t* __restrict__ s,
                                     const int64_t* __restrict__ ts, const int64_t* __restrict__ prev,
                                     const acc* __restrict__ tab, int64_t T, const acc* __restrict__ q,
                                     StepArgs A, scalar_t* __restrict__ gm, scalar_t* __restrict__ gs,
                                     acc* __restrict__ partial, int64_t D, int64_t C) {
  const int64_t n = sample_index(C), o = n * D;
  const Step<acc> k = step_coefs_at<acc>(A.p, tab, T, ts[n], prev[n]);
  const acc lim = q != nullptr ? q[n] : acc(A.clip_range);
  acc sq = 0;
  for_elements(D, C, [&](int64_t i) {
    acc g_m, g_s;
    sq += step_grad_element<acc>(k, A.clip_mode, lim, static_cast<acc>(s[o + i]), static_cast<acc>(m[o + i]),
                                 static_cast<acc>(gp[o + i]), static_cast<acc>(gx[o + i]), g_m, g_s);
    gm[o + i] = static_cast<scalar_t>(g_m);
    gs[o + i] = static_cast<scalar_t>(g_s);
  });
  if (partial != nullptr) {  // uniform over the block: every thread reaches block_sum
    sq = block_sum(sq);
    if (threadIdx.x == 0) partial[blockIdx.x] = sq / lim;
  }
}

// ------------------------------------------------------------------------------ launch helpers
inline cudaStream_t stream() { return at::cuda::getCurrentCUDAStream(); }

template <typename Kernel, typename... Args>
inline void launch(const Geometry& g, Kernel kernel, Args... args) {
  if (g.N == 0 || g.D == 0) return;
  kernel<<<dim3(static_cast<unsigned>(g.blocks())), kThreads, 0, stream()>>>(args...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

inline void check_grid(const char* op, const Geometry& g) {
  TORCH_CHECK(g.blocks() < (int64_t(1) << 31), op, ": tensor too large (", g.N, " samples of ",
              g.D, " elements)");
}

template <typename acc>
inline at::Tensor table_for(const at::Tensor& table) {
  return table_as(table, c10::CppTypeToScalarType<acc>::value);
}

StepArgs step_args(int64_t kind, int64_t prediction, bool clip_sample, double clip_range,
                   double eta, bool use_clipped, double final_alpha, bool has_threshold) {
  StepArgs a;
  a.p = {kind, prediction, eta, final_alpha, use_clipped};
  a.clip_mode = has_threshold ? kThreshold : (clip_sample ? kClip : kNoClip);
  a.clip_range = clip_range;
  return a;
}

// ------------------------------------------------------------------------------ ops
at::Tensor mix_cuda(const at::Tensor& x_, const at::Tensor& y_, const at::Tensor& t_,
                    const at::Tensor& table_, int64_t kind) {
  const char* op = "pykernels::diffusion_mix";
  check_mix(op, x_, y_, t_, table_, kind, at::kCUDA);
  const c10::cuda::CUDAGuard guard(x_.device());
  const auto x = x_.contiguous(), y = y_.contiguous(), t = t_.to(at::kLong).contiguous();
  const Geometry g = geometry(x);
  check_grid(op, g);
  at::Tensor out;
  PK_DISPATCH_FLOATING(x.scalar_type(), "diffusion_mix_cuda", [&] {
    using acc = acc_t<scalar_t>;
    const auto table = table_for<acc>(table_);
    if (kind >= kX0Epsilon) {
      out = at::empty(x.sizes(), x.options().dtype(c10::CppTypeToScalarType<acc>::value));
      launch(g, mix_kernel<scalar_t, acc>, x.const_data_ptr<scalar_t>(), y.const_data_ptr<scalar_t>(),
             t.const_data_ptr<int64_t>(), table.const_data_ptr<acc>(), table.numel(),
             out.data_ptr<acc>(), g.D, g.C, kind);
    } else {
      out = at::empty(x.sizes(), x.options());
      launch(g, mix_kernel<scalar_t, scalar_t>, x.const_data_ptr<scalar_t>(),
             y.const_data_ptr<scalar_t>(), t.const_data_ptr<int64_t>(), table.const_data_ptr<acc>(),
             table.numel(), out.data_ptr<scalar_t>(), g.D, g.C, kind);
    }
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> mix_backward_cuda(const at::Tensor& grad_, const at::Tensor& x,
                                                     const at::Tensor& t_, const at::Tensor& table_,
                                                     int64_t kind) {
  const char* op = "pykernels::diffusion_mix_backward";
  check_mix(op, x, x, t_, table_, kind, at::kCUDA);
  check_float(op, "grad", grad_);
  check_same_device(op, "grad", grad_, "x", x);
  check_same_shape(op, "grad", grad_, "x", x);
  const c10::cuda::CUDAGuard guard(x.device());
  const auto t = t_.to(at::kLong).contiguous();
  auto gx = at::empty(x.sizes(), x.options()), gy = at::empty(x.sizes(), x.options());
  const Geometry g = geometry(x);
  check_grid(op, g);
  PK_DISPATCH_FLOATING(x.scalar_type(), "diffusion_mix_backward_cuda", [&] {
    using acc = acc_t<scalar_t>;
    const auto table = table_for<acc>(table_);
    const auto grad = grad_.to(c10::CppTypeToScalarType<acc>::value).contiguous();
    launch(g, mix_backward_kernel<scalar_t, acc>, grad.const_data_ptr<acc>(),
           t.const_data_ptr<int64_t>(), table.const_data_ptr<acc>(), table.numel(),
           gx.data_ptr<scalar_t>(), gy.data_ptr<scalar_t>(), g.D, g.C, kind);
  });
  return {gx, gy};
}

at::Tensor loss_cuda(const at::Tensor& m_, const at::Tensor& x0_, const at::Tensor& noise_,
                     const at::Tensor& t_, const at::Tensor& table_, int64_t prediction,
                     bool elementwise) {
  const char* op = "pykernels::diffusion_loss";
  check_loss(op, m_, x0_, noise_, t_, table_, prediction, at::kCUDA);
  const c10::cuda::CUDAGuard guard(m_.device());
  const auto m = m_.contiguous(), x0 = x0_.contiguous(), nz = noise_.contiguous();
  const auto t = t_.to(at::kLong).contiguous();
  const Geometry g = geometry(m);
  check_grid(op, g);
  at::Tensor out;
  PK_DISPATCH_FLOATING(m.scalar_type(), "diffusion_loss_cuda", [&] {
    using acc = acc_t<scalar_t>;
    const auto accT = c10::CppTypeToScalarType<acc>::value;
    const auto table = table_for<acc>(table_);
    auto partial = at::zeros({g.N, g.C}, m.options().dtype(accT));
    at::Tensor elem = elementwise ? at::empty(m.sizes(), m.options().dtype(accT)) : at::Tensor();
    launch(g, loss_kernel<scalar_t>, m.const_data_ptr<scalar_t>(), x0.const_data_ptr<scalar_t>(),
           nz.const_data_ptr<scalar_t>(), t.const_data_ptr<int64_t>(), table.const_data_ptr<acc>(),
           table.numel(), elementwise ? elem.data_ptr<acc>() : nullptr, partial.data_ptr<acc>(), g.D,
           g.C, prediction);
    out = elementwise ? elem : partial.sum(1);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> loss_backward_cuda(
    const at::Tensor& grad_, const at::Tensor& m_, const at::Tensor& x0_, const at::Tensor& noise_,
    const at::Tensor& t_, const at::Tensor& table_, int64_t prediction, bool elementwise,
    std::array<bool, 3> output_mask) {
  const char* op = "pykernels::diffusion_loss_backward";
  check_loss(op, m_, x0_, noise_, t_, table_, prediction, at::kCUDA);
  check_float(op, "grad", grad_);
  check_same_device(op, "grad", grad_, "model_output", m_);
  TORCH_CHECK_VALUE(elementwise ? grad_.sizes() == m_.sizes()
                                : (grad_.dim() == 1 && grad_.size(0) == m_.size(0)),
                    op, ": argument 'grad' must have shape ",
                    elementwise ? m_.sizes() : m_.sizes().slice(0, 1), ", got ", grad_.sizes());
  const c10::cuda::CUDAGuard guard(m_.device());
  const auto m = m_.contiguous(), x0 = x0_.contiguous(), nz = noise_.contiguous();
  const auto t = t_.to(at::kLong).contiguous();
  const auto grads = loss_grads(m, output_mask);
  const at::Tensor &gm = grads[0], &gx = grads[1], &gn = grads[2];
  const Geometry g = geometry(m);
  check_grid(op, g);
  PK_DISPATCH_FLOATING(m.scalar_type(), "diffusion_loss_backward_cuda", [&] {
    using acc = acc_t<scalar_t>;
    const auto table = table_for<acc>(table_);
    const auto grad = grad_.to(c10::CppTypeToScalarType<acc>::value).contiguous();
    launch(g, loss_backward_kernel<scalar_t>, grad.const_data_ptr<acc>(), elementwise,
           m.const_data_ptr<scalar_t>(), x0.const_data_ptr<scalar_t>(), nz.const_data_ptr<scalar_t>(),
           t.const_data_ptr<int64_t>(), table.const_data_ptr<acc>(), table.numel(),
           output_mask[0] ? gm.data_ptr<scalar_t>() : nullptr, output_mask[1] ? gx.data_ptr<scalar_t>() : nullptr,
           output_mask[2] ? gn.data_ptr<scalar_t>() : nullptr, g.D, g.C,
           prediction);
  });
  return {gm, gx, gn};
}

std::tuple<at::Tensor, at::Tensor> step_cuda(
    const at::Tensor& m_, const at::Tensor& s_, const c10::optional<at::Tensor>& noise_,
    const at::Tensor& t_, const at::Tensor& prev_, const at::Tensor& table_,
    const c10::optional<at::Tensor>& threshold_, int64_t kind, int64_t prediction,
    bool clip_sample, double clip_range, double eta, bool use_clipped, double final_alpha) {
  const char* op = "pykernels::diffusion_step";
  check_step(op, m_, s_, noise_, t_, prev_, table_, threshold_, kind, prediction, clip_range, eta,
             final_alpha, at::kCUDA);
  const c10::cuda::CUDAGuard guard(s_.device());
  const auto m = m_.contiguous(), s = s_.contiguous();
  const auto nz = noise_.has_value() ? noise_->contiguous() : at::Tensor();
  const auto q = threshold_.has_value() ? threshold_->contiguous() : at::Tensor();
  const auto t = t_.to(at::kLong).contiguous(), prev = prev_.to(at::kLong).contiguous();
  const StepArgs A = step_args(kind, prediction, clip_sample, clip_range, eta, use_clipped,
                               final_alpha, q.defined());
  auto out = at::empty(s.sizes(), s.options()), x0c = at::empty(s.sizes(), s.options());
  const Geometry g = geometry(s);
  check_grid(op, g);
  PK_DISPATCH_FLOATING(s.scalar_type(), "diffusion_step_cuda", [&] {
    using acc = acc_t<scalar_t>;
    const auto table = table_for<acc>(table_);
    launch(g, step_kernel<scalar_t>, m.const_data_ptr<scalar_t>(), s.const_data_ptr<scalar_t>(),
           nz.defined() ? nz.const_data_ptr<scalar_t>() : nullptr, t.const_data_ptr<int64_t>(),
           prev.const_data_ptr<int64_t>(), table.const_data_ptr<acc>(), table.numel(),
           q.defined() ? q.const_data_ptr<acc>() : nullptr, A, out.data_ptr<scalar_t>(),
           x0c.data_ptr<scalar_t>(), g.D, g.C);
  });
  return {out, x0c};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> step_backward_cuda(
    const at::Tensor& gp_, const at::Tensor& gx_, const at::Tensor& m_, const at::Tensor& s_,
    const at::Tensor& t_, const at::Tensor& prev_, const at::Tensor& table_,
    const c10::optional<at::Tensor>& threshold_, int64_t kind, int64_t prediction,
    bool clip_sample, double clip_range, double eta, bool use_clipped, double final_alpha) {
  const char* op = "pykernels::diffusion_step_backward";
  check_step(op, m_, s_, c10::nullopt, t_, prev_, table_, threshold_, kind, prediction,
             clip_range, eta, final_alpha, at::kCUDA);
  check_like(op, "grad_prev_sample", gp_, "sample", s_);
  check_like(op, "grad_pred_original_sample", gx_, "sample", s_);
  const c10::cuda::CUDAGuard guard(s_.device());
  const auto m = m_.contiguous(), s = s_.contiguous(), gp = gp_.contiguous(), gx = gx_.contiguous();
  const auto q = threshold_.has_value() ? threshold_->contiguous() : at::Tensor();
  const auto t = t_.to(at::kLong).contiguous(), prev = prev_.to(at::kLong).contiguous();
  const StepArgs A = step_args(kind, prediction, clip_sample, clip_range, eta, use_clipped,
                               final_alpha, q.defined());
  auto gm = at::empty(s.sizes(), s.options()), gs = at::empty(s.sizes(), s.options());
  const Geometry g = geometry(s);
  check_grid(op, g);
  at::Tensor gq;
  PK_DISPATCH_FLOATING(s.scalar_type(), "diffusion_step_backward_cuda", [&] {
    using acc = acc_t<scalar_t>;
    const auto accT = c10::CppTypeToScalarType<acc>::value;
    const auto table = table_for<acc>(table_);
    auto partial = at::zeros({q.defined() ? g.N : 0, g.C}, s.options().dtype(accT));
    launch(g, step_backward_kernel<scalar_t>, gp.const_data_ptr<scalar_t>(),
           gx.const_data_ptr<scalar_t>(), m.const_data_ptr<scalar_t>(), s.const_data_ptr<scalar_t>(),
           t.const_data_ptr<int64_t>(), prev.const_data_ptr<int64_t>(), table.const_data_ptr<acc>(),
           table.numel(), q.defined() ? q.const_data_ptr<acc>() : nullptr, A,
           gm.data_ptr<scalar_t>(), gs.data_ptr<scalar_t>(),
           q.defined() ? partial.data_ptr<acc>() : nullptr, g.D, g.C);
    gq = q.defined() ? partial.sum(1) : at::empty({0}, s.options().dtype(accT));
  });
  return {gm, gs, gq};
}

}  // namespace
}  // namespace cuda
}  // namespace pykernels

TORCH_LIBRARY_IMPL(pykernels, CUDA, m) {
  using namespace pykernels::cuda;
  m.impl("diffusion_mix", &mix_cuda);
  m.impl("diffusion_mix_backward", &mix_backward_cuda);
  m.impl("diffusion_loss", &loss_cuda);
  m.impl("diffusion_loss_backward", &loss_backward_cuda);
  m.impl("diffusion_step", &step_cuda);
  m.impl("diffusion_step_backward", &step_backward_cuda);
}
