// CUDA kernels of the flow-matching family: flow_interpolate, flow_matching_loss and
// flow_match_euler_step, forward and backward, one pass each.
//
// Tensors are [N, D] (N samples, sigmas [N]). Block (n, c) = (blockIdx.x, blockIdx.y)
// handles chunk c of sample n: each thread reads sigmas[n] (a cached load; no host sync,
// CUDA-graph capturable), computes the sample's coefficients, then handles kUnroll
// coalesced elements. Per-sample sums are reduced per block in a fixed order into [N, C]
// partials that at::sum adds: deterministic. With a = 1 - sigma, b = sigma,
// dt = sigma_next - sigma and d = m - (eps - x0), the kernels are
//   axpby       out = p x + q y     (interpolate: p = a, q = b; Euler step: p = 1, q = dt)
//   scale_pair  gx = p g, gy = b g  (interpolate backward: p = a; Euler backward: p = dt,
//                                    no gy)
//   loss        c(sigma) sum_i d_i^2 / D per block, and x_t = a x0 + b eps when asked
//   loss_grad   h = 2 c(sigma) g_n d / D: gm = h, gx0 = h + a gx_t, geps = b gx_t - h
#include <torch/library.h>

#include <limits>

#include <cub/block/block_reduce.cuh>

#include "common/cuda_utils.cuh"
#include "common/flow_matching_args.h"

namespace pykernels {
namespace cuda {
namespace {

using namespace pykernels::flow_matching;
using Tensor = at::Tensor;

constexpr int kThreads = 256;
constexpr int kUnroll = 8;
constexpr int64_t kChunk = int64_t(kThreads) * kUnroll;

struct Geometry {
  int64_t N, D, C;
};

inline Geometry geometry(const Tensor& x) {
  const int64_t N = x.size(0), D = N == 0 ? 0 : x.numel() / N;
  return {N, D, std::max<int64_t>(1, (D + kChunk - 1) / kChunk)};
}

// f(i) for this thread's elements i (flat offsets) of chunk blockIdx.y of sample blockIdx.x.
template <typename F>
__device__ __forceinline__ void for_elements(int64_t D, F f) {
  const int64_t first = int64_t(blockIdx.y) * kChunk + threadIdx.x;
  const int64_t base = int64_t(blockIdx.x) * D;
#pragma unroll
  for (int k = 0; k < kUnroll; ++k) {
    const int64_t i = first + int64_t(k) * kThreads;
    if (i < D) f(base + i);
  }
}

// ------------------------------------------------------------------------------ kernels
// out = p x + q y with (p, q) = (1 - sigma, sigma), or (1, sigma_next - sigma) when
// sigmas_next is given (the Euler step).
template <typename scalar_t, typename acc = acc_t<scalar_t>>
__global__ void axpby_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ y,
                             const acc* __restrict__ sigmas, const acc* __restrict__ sigmas_next,
                             scalar_t* __restrict__ out, int64_t D) {
  const acc s = __ldg(sigmas + blockIdx.x);
  const acc p = sigmas_next != nullptr ? acc(1) : acc(1) - s;
  const acc q = sigmas_next != nullptr ? __ldg(sigmas_next + blockIdx.x) - s : s;
  for_elements(D, [&](int64_t i) {
    out[i] = static_cast<scalar_t>(p * static_cast<acc>(x[i]) + q * static_cast<acc>(y[i]));
  });
}

// gx = p g with p = 1 - sigma, or sigma_next - sigma when sigmas_next is given (the Euler
// step); gy = sigma g when gy is not null (interpolate).
template <typename scalar_t, typename acc = acc_t<scalar_t>>
__global__ void scale_pair_kernel(const scalar_t* __restrict__ g, const acc* __restrict__ sigmas,
                                  const acc* __restrict__ sigmas_next, scalar_t* __restrict__ gx,
                                  scalar_t* __restrict__ gy, int64_t D) {
  const acc s = __ldg(sigmas + blockIdx.x);
  const acc p = sigmas_next != nullptr ? __ldg(sigmas_next + blockIdx.x) - s : acc(1) - s;
  for_elements(D, [&](int64_t i) {
    const acc gv = static_cast<acc>(g[i]);
    gx[i] = static_cast<scalar_t>(p * gv);
    if (gy != nullptr) gy[i] = static_cast<scalar_t>(s * gv);
  });
}

// d = m - (eps - x0) of element i
template <typename scalar_t, typename acc = acc_t<scalar_t>>
__device__ __forceinline__ acc velocity_error(const scalar_t* m, const scalar_t* x0,
                                              const scalar_t* eps, int64_t i) {
  return static_cast<acc>(m[i]) - (static_cast<acc>(eps[i]) - static_cast<acc>(x0[i]));
}

template <typename scalar_t, typename acc = acc_t<scalar_t>>
__global__ void loss_kernel(const scalar_t* __restrict__ m, const scalar_t* __restrict__ x0,
                            const scalar_t* __restrict__ eps, const acc* __restrict__ sigmas,
                            LossArgs args, acc* __restrict__ partial, scalar_t* __restrict__ noisy,
                            int64_t D) {
  const acc s = __ldg(sigmas + blockIdx.x);
  acc sum = 0;
  for_elements(D, [&](int64_t i) {
    const acc d = velocity_error(m, x0, eps, i);
    sum += d * d;
    if (noisy != nullptr) {
      const acc xt = (acc(1) - s) * static_cast<acc>(x0[i]) + s * static_cast<acc>(eps[i]);
      noisy[i] = static_cast<scalar_t>(xt);
    }
  });
  // CUB's block reduction adds in a fixed tree for a fixed block size: deterministic
  using Reduce = cub::BlockReduce<acc, kThreads>;
  __shared__ typename Reduce::TempStorage scratch;
  sum = Reduce(scratch).Sum(sum);
  if (threadIdx.x == 0) {
    const acc c = loss_weight<acc>(args.weighting, args.precondition, s);
    partial[int64_t(blockIdx.x) * gridDim.y + blockIdx.y] = c * sum / acc(D);
  }
}

// The gradients a backward call writes (null: not asked for) and x_t's gradient (or null).
template <typename scalar_t>
struct LossGrads {
  const scalar_t* gx_t;
  scalar_t *gm, *gx0, *geps;
};

template <typename scalar_t, typename acc = acc_t<scalar_t>>
__global__ void loss_backward_kernel(const acc* __restrict__ grad, const scalar_t* __restrict__ m,
                                     const scalar_t* __restrict__ x0,
                                     const scalar_t* __restrict__ eps,
                                     const acc* __restrict__ sigmas, LossArgs args,
                                     LossGrads<scalar_t> g, int64_t D) {
  const acc s = __ldg(sigmas + blockIdx.x);
  const acc c = loss_weight<acc>(args.weighting, args.precondition, s);
  const acc k = acc(2) * c * __ldg(grad + blockIdx.x) / acc(D);
  for_elements(D, [&](int64_t i) {
    const acc h = k * velocity_error(m, x0, eps, i);
    const acc gxt = g.gx_t != nullptr ? static_cast<acc>(g.gx_t[i]) : acc(0);
    // a null output is a gradient nobody asked for (uniform across the grid: no divergence)
    if (g.gm != nullptr) g.gm[i] = static_cast<scalar_t>(h);
    if (g.gx0 != nullptr) g.gx0[i] = static_cast<scalar_t>((acc(1) - s) * gxt + h);
    if (g.geps != nullptr) g.geps[i] = static_cast<scalar_t>(s * gxt - h);
  });
}

// ------------------------------------------------------------------------------ launch helpers
template <typename Kernel, typename... Args>
inline void launch(const char* op, const Geometry& g, Kernel kernel, Args... args) {
  if (g.N == 0 || g.D == 0) return;
  TORCH_CHECK(g.N < (int64_t(1) << 31) && g.C < 65536, op, ": tensor too large (", g.N,
              " samples of ", g.D, " elements)");
  const dim3 grid(static_cast<unsigned>(g.N), static_cast<unsigned>(g.C));
  kernel<<<grid, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(args...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Per-sample values ([N] sigmas, the loss gradient) in the accumulation dtype of x.
inline Tensor acc_copy(const Tensor& t, const Tensor& x) {
  return t.to(x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat).contiguous();
}

// An output like x, or an empty tensor (an output nobody asked for).
inline Tensor output_like(const Tensor& x, bool want) {
  return want ? at::empty(x.sizes(), x.options()) : at::empty({0}, x.options());
}

template <typename T>
inline T* ptr_if(const Tensor& t, bool want) {
  return want ? t.data_ptr<T>() : nullptr;
}

template <typename T>
inline const T* cptr_if(const Tensor& t) {
  return t.defined() ? t.const_data_ptr<T>() : nullptr;
}

// ------------------------------------------------------------------------------ ops
Tensor axpby(const char* op, const Tensor& x_, const Tensor& y_, const Tensor& sigmas_,
             const Tensor& sigmas_next_) {
  const c10::cuda::CUDAGuard guard(x_.device());
  const auto x = x_.contiguous(), y = y_.contiguous();
  const auto sigmas = acc_copy(sigmas_, x);
  const auto sigmas_next = sigmas_next_.defined() ? acc_copy(sigmas_next_, x) : Tensor();
  auto out = output_like(x, true);
  const Geometry g = geometry(x);
  PK_DISPATCH_FLOATING(x.scalar_type(), "flow_matching_axpby_cuda", [&] {
    using acc = acc_t<scalar_t>;
    launch(op, g, axpby_kernel<scalar_t>, x.const_data_ptr<scalar_t>(),
           y.const_data_ptr<scalar_t>(), sigmas.const_data_ptr<acc>(), cptr_if<acc>(sigmas_next),
           out.data_ptr<scalar_t>(), g.D);
  });
  return out;
}

std::tuple<Tensor, Tensor> scale_pair(const char* op, const Tensor& grad_, const Tensor& sigmas_,
                                      const Tensor& sigmas_next_) {
  const bool euler = sigmas_next_.defined();
  if (euler) {
    check_scale_backward(op, grad_, {{"sigmas", sigmas_}, {"sigmas_next", sigmas_next_}},
                         at::kCUDA);
  } else {
    check_scale_backward(op, grad_, {{"sigmas", sigmas_}}, at::kCUDA);
  }
  const c10::cuda::CUDAGuard guard(grad_.device());
  const auto grad = grad_.contiguous();
  const auto sigmas = acc_copy(sigmas_, grad);
  const auto sigmas_next = euler ? acc_copy(sigmas_next_, grad) : Tensor();
  auto gx = output_like(grad, true), gy = output_like(grad, !euler);
  const Geometry g = geometry(grad);
  PK_DISPATCH_FLOATING(grad.scalar_type(), "flow_matching_scale_pair_cuda", [&] {
    using acc = acc_t<scalar_t>;
    launch(op, g, scale_pair_kernel<scalar_t>, grad.const_data_ptr<scalar_t>(),
           sigmas.const_data_ptr<acc>(), cptr_if<acc>(sigmas_next), gx.data_ptr<scalar_t>(),
           ptr_if<scalar_t>(gy, !euler), g.D);
  });
  return {gx, gy};
}

Tensor flow_interpolate_cuda(const Tensor& x0, const Tensor& noise, const Tensor& sigmas) {
  const char* op = "pykernels::flow_interpolate";
  check_interpolate(op, x0, noise, sigmas, at::kCUDA);
  return axpby(op, x0, noise, sigmas, Tensor());
}

std::tuple<Tensor, Tensor> flow_interpolate_backward_cuda(const Tensor& grad,
                                                          const Tensor& sigmas) {
  return scale_pair("pykernels::flow_interpolate_backward", grad, sigmas, Tensor());
}

Tensor flow_match_euler_step_cuda(const Tensor& m, const Tensor& sample, const Tensor& sigmas,
                                  const Tensor& sigmas_next) {
  const char* op = "pykernels::flow_match_euler_step";
  check_euler_step(op, m, sample, sigmas, sigmas_next, at::kCUDA);
  return axpby(op, sample, m, sigmas, sigmas_next);
}

Tensor flow_match_euler_step_backward_cuda(const Tensor& grad, const Tensor& sigmas,
                                           const Tensor& sigmas_next) {
  const char* op = "pykernels::flow_match_euler_step_backward";
  return std::get<0>(scale_pair(op, grad, sigmas, sigmas_next));
}

std::tuple<Tensor, Tensor> flow_matching_loss_cuda(const Tensor& m_, const Tensor& x0_,
                                                   const Tensor& noise_, const Tensor& sigmas_,
                                                   c10::string_view weighting_scheme,
                                                   bool precondition_outputs, bool return_noisy) {
  const char* op = "pykernels::flow_matching_loss";
  const int64_t weighting =
      check_loss(op, m_, x0_, noise_, sigmas_, std::string(weighting_scheme), at::kCUDA);
  const c10::cuda::CUDAGuard guard(m_.device());
  const auto m = m_.contiguous(), x0 = x0_.contiguous(), noise = noise_.contiguous();
  const auto sigmas = acc_copy(sigmas_, m);
  const Geometry g = geometry(m);
  auto partial = at::zeros({g.N, g.C}, sigmas.options());  // zeros: D = 0 launches nothing
  auto noisy = output_like(m, return_noisy);
  PK_DISPATCH_FLOATING(m.scalar_type(), "flow_matching_loss_cuda", [&] {
    using acc = acc_t<scalar_t>;
    launch(op, g, loss_kernel<scalar_t>, m.const_data_ptr<scalar_t>(),
           x0.const_data_ptr<scalar_t>(), noise.const_data_ptr<scalar_t>(),
           sigmas.const_data_ptr<acc>(), LossArgs{weighting, precondition_outputs},
           partial.data_ptr<acc>(), ptr_if<scalar_t>(noisy, return_noisy), g.D);
  });
  auto loss = partial.sum(1);
  // a mean over no elements is NaN, as torch's
  if (g.D == 0) loss.fill_(std::numeric_limits<double>::quiet_NaN());
  return {loss, noisy};
}

std::tuple<Tensor, Tensor, Tensor> flow_matching_loss_backward_cuda(
    const Tensor& grad_, const c10::optional<Tensor>& grad_noisy_, const Tensor& m_,
    const Tensor& x0_, const Tensor& noise_, const Tensor& sigmas_,
    c10::string_view weighting_scheme, bool precondition_outputs, std::array<bool, 3> output_mask) {
  const char* op = "pykernels::flow_matching_loss_backward";
  const int64_t weighting = check_loss_backward(op, grad_, grad_noisy_, m_, x0_, noise_, sigmas_,
                                                std::string(weighting_scheme), at::kCUDA);
  const c10::cuda::CUDAGuard guard(m_.device());
  const auto m = m_.contiguous(), x0 = x0_.contiguous(), noise = noise_.contiguous();
  const auto grad = acc_copy(grad_, m), sigmas = acc_copy(sigmas_, m);
  const auto gxt = grad_noisy_.has_value() ? grad_noisy_->contiguous() : Tensor();
  std::array<Tensor, 3> out;
  for (int i = 0; i < 3; ++i) out[i] = output_like(m, output_mask[i]);
  const Geometry g = geometry(m);
  PK_DISPATCH_FLOATING(m.scalar_type(), "flow_matching_loss_backward_cuda", [&] {
    using acc = acc_t<scalar_t>;
    const LossGrads<scalar_t> grads{
        cptr_if<scalar_t>(gxt), ptr_if<scalar_t>(out[0], output_mask[0]),
        ptr_if<scalar_t>(out[1], output_mask[1]), ptr_if<scalar_t>(out[2], output_mask[2])};
    launch(op, g, loss_backward_kernel<scalar_t>, grad.const_data_ptr<acc>(),
           m.const_data_ptr<scalar_t>(), x0.const_data_ptr<scalar_t>(),
           noise.const_data_ptr<scalar_t>(), sigmas.const_data_ptr<acc>(),
           LossArgs{weighting, precondition_outputs}, grads, g.D);
  });
  return {out[0], out[1], out[2]};
}

}  // namespace
}  // namespace cuda
}  // namespace pykernels

TORCH_LIBRARY_IMPL(pykernels, CUDA, m) {
  using namespace pykernels::cuda;
  m.impl("flow_interpolate", &flow_interpolate_cuda);
  m.impl("flow_interpolate_backward", &flow_interpolate_backward_cuda);
  m.impl("flow_matching_loss", &flow_matching_loss_cuda);
  m.impl("flow_matching_loss_backward", &flow_matching_loss_backward_cuda);
  m.impl("flow_match_euler_step", &flow_match_euler_step_cuda);
  m.impl("flow_match_euler_step_backward", &flow_match_euler_step_backward_cuda);
}
