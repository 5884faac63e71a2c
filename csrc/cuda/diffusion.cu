// CUDA kernels of the diffusion family (pykernels/reference/diffusion.py has the math,
// common/diffusion_args.h the per-sample coefficients and the three kernels they feed):
//   blend_kernel           add_noise, get_velocity  out = cx x + cy y
//   target_error_kernel  diffusion_loss           (m - target)^2, target = tx x0 + tn noise
//   sampler_step_kernel    ddpm_step, ddim_step     x0, its clip, out = ox x0c + os s + om m + on z
//
// Tensors are [N, D] (N samples). Block b handles chunk c = b % C of sample n = b / C
// (C = ceil(D / kChunk)); each thread computes the sample's coefficients from the
// alphas_cumprod table on the device (two cached reads; no host sync, CUDA-graph
// capturable), then handles kUnroll coalesced elements. Per-sample sums are reduced per
// block in a fixed order into [N, C] partials that ATen's sum adds: deterministic.
// Timesteps are clamped into the table (reading them back to check would sync); the CPU
// backend and the Python API raise on out-of-range CPU timesteps instead. Offsets are int64.
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

// ------------------------------------------------------------------------------ blend
// out = cx x + cy y, (cx, cy) = coefs(a), a = alphas_cumprod[t[n]].
template <typename scalar_t, typename CoefFn, typename acc = acc_t<scalar_t>>
__global__ void blend_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ y,
                             const int64_t* __restrict__ ts, const acc* __restrict__ tab, int64_t T,
                             scalar_t* __restrict__ out, int64_t D, int64_t C, CoefFn coefs) {
  const int64_t n = sample_index(C), o = n * D;
  const Coefs<acc> k = coefs(alpha_at(tab, T, ts[n]));
  for_elements(D, C, [&](int64_t i) {
    out[o + i] = static_cast<scalar_t>(k.cx * static_cast<acc>(x[o + i]) +
                                       k.cy * static_cast<acc>(y[o + i]));
  });
}

// (gx, gy) = (cx g, cy g).
template <typename scalar_t, typename CoefFn, typename acc = acc_t<scalar_t>>
__global__ void blend_backward_kernel(const scalar_t* __restrict__ g,
                                      const int64_t* __restrict__ ts, const acc* __restrict__ tab,
                                      int64_t T, scalar_t* __restrict__ gx,
                                      scalar_t* __restrict__ gy, int64_t D, int64_t C,
                                      CoefFn coefs) {
  const int64_t n = sample_index(C), o = n * D;
  const Coefs<acc> k = coefs(alpha_at(tab, T, ts[n]));
  for_elements(D, C, [&](int64_t i) {
    const acc gv = static_cast<acc>(g[o + i]);
    gx[o + i] = static_cast<scalar_t>(k.cx * gv);
    gy[o + i] = static_cast<scalar_t>(k.cy * gv);
  });
}

// ------------------------------------------------------------------------------ target_error
template <typename scalar_t, typename acc = acc_t<scalar_t>>
__device__ __forceinline__ acc target_diff(const Coefs<acc>& k, scalar_t m, scalar_t x0,
                                           scalar_t z) {
  return static_cast<acc>(m) - (k.cx * static_cast<acc>(x0) + k.cy * static_cast<acc>(z));
}

// elem (elementwise) = d^2; partial[block] = the block's sum of d^2.
template <typename scalar_t, typename acc = acc_t<scalar_t>>
__global__ void target_error_kernel(const scalar_t* __restrict__ m, const scalar_t* __restrict__ x0,
                                    const scalar_t* __restrict__ nz, const int64_t* __restrict__ ts,
                                    const acc* __restrict__ tab, int64_t T, acc* __restrict__ elem,
                                    acc* __restrict__ partial, int64_t D, int64_t C,
                                    int64_t prediction) {
  const int64_t n = sample_index(C), o = n * D;
  const Coefs<acc> k = diffusion_loss_coefs<acc>(prediction, alpha_at(tab, T, ts[n]));
  acc s = 0;
  for_elements(D, C, [&](int64_t i) {
    const acc d = target_diff(k, m[o + i], x0[o + i], nz[o + i]);
    if (elem != nullptr) elem[o + i] = d * d;
    s += d * d;
  });
  s = block_sum(s);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

// h = 2 g d (g: per element, or the scalar *g0 times g_scale): gm = h, gx = -tx h, gn = -tn h.
template <typename scalar_t, typename acc = acc_t<scalar_t>>
__global__ void target_error_backward_kernel(
    const acc* __restrict__ g, bool elementwise, acc g_scale, const scalar_t* __restrict__ m,
    const scalar_t* __restrict__ x0, const scalar_t* __restrict__ nz,
    const int64_t* __restrict__ ts, const acc* __restrict__ tab, int64_t T,
    scalar_t* __restrict__ gm, scalar_t* __restrict__ gx, scalar_t* __restrict__ gn, int64_t D,
    int64_t C, int64_t prediction) {
  const int64_t n = sample_index(C), o = n * D;
  const Coefs<acc> k = diffusion_loss_coefs<acc>(prediction, alpha_at(tab, T, ts[n]));
  const acc g0 = elementwise ? acc(0) : g[0] * g_scale;
  for_elements(D, C, [&](int64_t i) {
    const acc h =
        acc(2) * (elementwise ? g[o + i] : g0) * target_diff(k, m[o + i], x0[o + i], nz[o + i]);
    // a null output is a gradient nobody asked for (uniform across the grid: no divergence)
    if (gm != nullptr) gm[o + i] = static_cast<scalar_t>(h);
    if (gx != nullptr) gx[o + i] = static_cast<scalar_t>(-k.cx * h);
    if (gn != nullptr) gn[o + i] = static_cast<scalar_t>(-k.cy * h);
  });
}

// ------------------------------------------------------------------------------ sampler_step
template <typename scalar_t, typename acc = acc_t<scalar_t>>
__global__ void sampler_step_kernel(const scalar_t* __restrict__ m, const scalar_t* __restrict__ s,
                                    const scalar_t* __restrict__ nz, const int64_t* __restrict__ ts,
                                    const int64_t* __restrict__ prev, const acc* __restrict__ tab,
                                    int64_t T, const acc* __restrict__ q, StepParams p,
                                    scalar_t* __restrict__ out, scalar_t* __restrict__ x0c,
                                    int64_t D, int64_t C) {
  const int64_t n = sample_index(C), o = n * D;
  const Step<acc> k = step_coefs_at<acc>(p, tab, T, ts[n], prev[n]);
  const acc lim = q != nullptr ? q[n] : acc(p.clip_range);
  const bool noisy = nz != nullptr && k.on != acc(0);  // DDPM t = 0, DDIM eta = 0: noise not read
  for_elements(D, C, [&](int64_t i) {
    acc c;
    acc r = step_element<acc>(k, p.clip_mode, lim, static_cast<acc>(s[o + i]),
                              static_cast<acc>(m[o + i]), c);
    if (noisy) r += k.on * static_cast<acc>(nz[o + i]);
    out[o + i] = static_cast<scalar_t>(r);
    x0c[o + i] = static_cast<scalar_t>(c);
  });
}

template <typename scalar_t, typename acc = acc_t<scalar_t>>
__global__ void sampler_step_backward_kernel(
    const scalar_t* __restrict__ gp, const scalar_t* __restrict__ gx,
    const scalar_t* __restrict__ m, const scalar_t* __restrict__ s, const int64_t* __restrict__ ts,
    const int64_t* __restrict__ prev, const acc* __restrict__ tab, int64_t T,
    const acc* __restrict__ q, StepParams p, scalar_t* __restrict__ gm, scalar_t* __restrict__ gs,
    acc* __restrict__ partial, int64_t D, int64_t C) {
  const int64_t n = sample_index(C), o = n * D;
  const Step<acc> k = step_coefs_at<acc>(p, tab, T, ts[n], prev[n]);
  const acc lim = q != nullptr ? q[n] : acc(p.clip_range);
  acc sq = 0;
  for_elements(D, C, [&](int64_t i) {
    acc g_m, g_s;
    sq += step_grad_element<acc>(k, p.clip_mode, lim, static_cast<acc>(s[o + i]),
                                 static_cast<acc>(m[o + i]), static_cast<acc>(gp[o + i]),
                                 static_cast<acc>(gx[o + i]), g_m, g_s);
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

inline Geometry checked_geometry(const char* op, const at::Tensor& x) {
  const Geometry g = geometry(x);
  TORCH_CHECK(g.blocks() < (int64_t(1) << 31), op, ": tensor too large (", g.N, " samples of ", g.D,
              " elements)");
  return g;
}

// ------------------------------------------------------------------------------ kernels
// The launches that the ops' wrappers (common/diffusion_args.h's Ops) call on CUDA tensors.
struct Kernels {
  static constexpr at::DeviceType kDevice = at::kCUDA;

  template <typename CoefFn>
  static at::Tensor blend(const char* op, const at::Tensor& x_, const at::Tensor& y_,
                          const at::Tensor& t, const at::Tensor& table, CoefFn coefs) {
    const c10::cuda::CUDAGuard guard(x_.device());
    const auto x = x_.contiguous(), y = y_.contiguous();
    const Geometry g = checked_geometry(op, x);
    auto out = at::empty(x.sizes(), x.options());
    PK_DISPATCH_FLOATING(x.scalar_type(), "blend_cuda", [&] {
      using acc = acc_t<scalar_t>;
      const Schedule<acc> sc(table, t);
      launch(g, blend_kernel<scalar_t, CoefFn>, x.const_data_ptr<scalar_t>(),
             y.const_data_ptr<scalar_t>(), sc.t.const_data_ptr<int64_t>(),
             sc.table.const_data_ptr<acc>(), sc.table.numel(), out.data_ptr<scalar_t>(), g.D, g.C,
             coefs);
    });
    return out;
  }

  template <typename CoefFn>
  static std::tuple<at::Tensor, at::Tensor> blend_backward(const char* op, const at::Tensor& grad_,
                                                           const at::Tensor& t,
                                                           const at::Tensor& table, CoefFn coefs) {
    const c10::cuda::CUDAGuard guard(grad_.device());
    const auto grad = grad_.contiguous();
    const Geometry g = checked_geometry(op, grad);
    auto gx = at::empty(grad.sizes(), grad.options()), gy = at::empty(grad.sizes(), grad.options());
    PK_DISPATCH_FLOATING(grad.scalar_type(), "blend_backward_cuda", [&] {
      using acc = acc_t<scalar_t>;
      const Schedule<acc> sc(table, t);
      launch(g, blend_backward_kernel<scalar_t, CoefFn>, grad.const_data_ptr<scalar_t>(),
             sc.t.const_data_ptr<int64_t>(), sc.table.const_data_ptr<acc>(), sc.table.numel(),
             gx.data_ptr<scalar_t>(), gy.data_ptr<scalar_t>(), g.D, g.C, coefs);
    });
    return {gx, gy};
  }

  // d^2 per element (elementwise, accumulation dtype), else the sum of the [N, C] block
  // partials over count.
  static at::Tensor target_error(const char* op, const at::Tensor& m_, const at::Tensor& x0_,
                                 const at::Tensor& noise_, const at::Tensor& timesteps,
                                 const at::Tensor& alphas_cumprod, int64_t prediction,
                                 bool elementwise, double count) {
    const c10::cuda::CUDAGuard guard(m_.device());
    const auto m = m_.contiguous(), x0 = x0_.contiguous(), nz = noise_.contiguous();
    const Geometry g = checked_geometry(op, m);
    at::Tensor out;
    PK_DISPATCH_FLOATING(m.scalar_type(), "target_error_cuda", [&] {
      using acc = acc_t<scalar_t>;
      const auto accT = c10::CppTypeToScalarType<acc>::value;
      const Schedule<acc> sc(alphas_cumprod, timesteps);
      auto partial = at::zeros({g.N, g.C}, m.options().dtype(accT));
      at::Tensor elem = elementwise ? at::empty(m.sizes(), m.options().dtype(accT)) : at::Tensor();
      launch(g, target_error_kernel<scalar_t>, m.const_data_ptr<scalar_t>(),
             x0.const_data_ptr<scalar_t>(), nz.const_data_ptr<scalar_t>(),
             sc.t.const_data_ptr<int64_t>(), sc.table.const_data_ptr<acc>(), sc.table.numel(),
             elementwise ? elem.data_ptr<acc>() : nullptr, partial.data_ptr<acc>(), g.D, g.C,
             prediction);
      out = elementwise ? elem : partial.sum() / count;
    });
    return out;
  }

  // h = 2 g d with g per element, or the scalar's over count; only the gradients output_mask
  // asks for.
  static std::tuple<at::Tensor, at::Tensor, at::Tensor> target_error_backward(
      const char* op, const at::Tensor& grad_, const at::Tensor& m_, const at::Tensor& x0_,
      const at::Tensor& noise_, const at::Tensor& timesteps, const at::Tensor& alphas_cumprod,
      int64_t prediction, bool elementwise, double count, std::array<bool, 3> output_mask) {
    const c10::cuda::CUDAGuard guard(m_.device());
    const auto m = m_.contiguous(), x0 = x0_.contiguous(), nz = noise_.contiguous();
    const auto grads = loss_grads(m, output_mask);
    const Geometry g = checked_geometry(op, m);
    PK_DISPATCH_FLOATING(m.scalar_type(), "target_error_backward_cuda", [&] {
      using acc = acc_t<scalar_t>;
      const Schedule<acc> sc(alphas_cumprod, timesteps);
      const auto grad = grad_.to(c10::CppTypeToScalarType<acc>::value).contiguous();
      const acc scale = count > 0 ? acc(1.0 / count) : acc(1);
      auto ptr = [&](int j) { return output_mask[j] ? grads[j].data_ptr<scalar_t>() : nullptr; };
      launch(g, target_error_backward_kernel<scalar_t>, grad.const_data_ptr<acc>(), elementwise,
             scale, m.const_data_ptr<scalar_t>(), x0.const_data_ptr<scalar_t>(),
             nz.const_data_ptr<scalar_t>(), sc.t.const_data_ptr<int64_t>(),
             sc.table.const_data_ptr<acc>(), sc.table.numel(), ptr(0), ptr(1), ptr(2), g.D, g.C,
             prediction);
    });
    return {grads[0], grads[1], grads[2]};
  }

  // (prev_sample, pred_original_sample) of a DDPM or DDIM step (p.ddim), sample's dtype.
  static std::tuple<at::Tensor, at::Tensor> sampler_step(
      const char* op, const at::Tensor& m_, const at::Tensor& t, const at::Tensor& prev_,
      const at::Tensor& s_, const at::Tensor& table, const c10::optional<at::Tensor>& noise,
      const c10::optional<at::Tensor>& threshold, const StepParams& p) {
    const c10::cuda::CUDAGuard guard(s_.device());
    const auto m = m_.contiguous(), s = s_.contiguous(), prev = prev_.to(at::kLong).contiguous();
    const auto nz = noise.has_value() ? noise->contiguous() : at::Tensor();
    const auto q = threshold.has_value() ? threshold->contiguous() : at::Tensor();
    auto out = at::empty(s.sizes(), s.options()), x0c = at::empty(s.sizes(), s.options());
    const Geometry g = checked_geometry(op, s);
    PK_DISPATCH_FLOATING(s.scalar_type(), "sampler_step_cuda", [&] {
      using acc = acc_t<scalar_t>;
      const Schedule<acc> sc(table, t);
      launch(g, sampler_step_kernel<scalar_t>, m.const_data_ptr<scalar_t>(),
             s.const_data_ptr<scalar_t>(), nz.defined() ? nz.const_data_ptr<scalar_t>() : nullptr,
             sc.t.const_data_ptr<int64_t>(), prev.const_data_ptr<int64_t>(),
             sc.table.const_data_ptr<acc>(), sc.table.numel(),
             q.defined() ? q.const_data_ptr<acc>() : nullptr, p, out.data_ptr<scalar_t>(),
             x0c.data_ptr<scalar_t>(), g.D, g.C);
    });
    return {out, x0c};
  }

  // (grad_model_output, grad_sample, grad_threshold: [N] per-sample sums, or [0] without a
  // threshold).
  static std::tuple<at::Tensor, at::Tensor, at::Tensor> sampler_step_backward(
      const char* op, const at::Tensor& gp_, const at::Tensor& gx_, const at::Tensor& m_,
      const at::Tensor& t, const at::Tensor& prev_, const at::Tensor& s_, const at::Tensor& table,
      const c10::optional<at::Tensor>& threshold, const StepParams& p) {
    const c10::cuda::CUDAGuard guard(s_.device());
    const auto m = m_.contiguous(), s = s_.contiguous();
    const auto gp = gp_.contiguous(), gx = gx_.contiguous();
    const auto prev = prev_.to(at::kLong).contiguous();
    const auto q = threshold.has_value() ? threshold->contiguous() : at::Tensor();
    auto gm = at::empty(s.sizes(), s.options()), gs = at::empty(s.sizes(), s.options());
    const Geometry g = checked_geometry(op, s);
    at::Tensor gq;
    PK_DISPATCH_FLOATING(s.scalar_type(), "sampler_step_backward_cuda", [&] {
      using acc = acc_t<scalar_t>;
      const auto accT = c10::CppTypeToScalarType<acc>::value;
      const Schedule<acc> sc(table, t);
      auto partial = at::zeros({q.defined() ? g.N : 0, g.C}, s.options().dtype(accT));
      launch(g, sampler_step_backward_kernel<scalar_t>, gp.const_data_ptr<scalar_t>(),
             gx.const_data_ptr<scalar_t>(), m.const_data_ptr<scalar_t>(),
             s.const_data_ptr<scalar_t>(), sc.t.const_data_ptr<int64_t>(),
             prev.const_data_ptr<int64_t>(), sc.table.const_data_ptr<acc>(), sc.table.numel(),
             q.defined() ? q.const_data_ptr<acc>() : nullptr, p, gm.data_ptr<scalar_t>(),
             gs.data_ptr<scalar_t>(), q.defined() ? partial.data_ptr<acc>() : nullptr, g.D, g.C);
      gq = q.defined() ? partial.sum(1) : at::empty({0}, s.options().dtype(accT));
    });
    return {gm, gs, gq};
  }
};

}  // namespace
}  // namespace cuda
}  // namespace pykernels

TORCH_LIBRARY_IMPL(pykernels, CUDA, m) {
  pykernels::diffusion::register_ops<pykernels::cuda::Kernels>(m);
}
