// CPU ops of the flow-matching family: flow_interpolate, flow_matching_loss and
// flow_match_euler_step, forward and backward, each one pass over the elements. The
// kernels are in cpu/flow_matching_kernels.h, built twice: here with the baseline flags
// (namespace generic) and in flow_matching_avx2.cpp for AVX2 + FMA (namespace avx2);
// kernels() picks one at run time. The ops here check their arguments, make the inputs
// contiguous, convert the per-sample values to the accumulation dtype and allocate the
// outputs.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <array>

#include "common/cpu_capability.h"
#include "common/dispatch.h"
#include "common/flow_matching_args.h"
#include "common/output_memory.h"

#define PK_FLOW_NS generic
#include "cpu/flow_matching_kernels.h"

namespace pykernels {
namespace cpu {

#ifdef PK_HAVE_AVX2_BUILD
namespace avx2 {  // flow_matching_avx2.cpp
const FlowKernels& flow_kernels();
}  // namespace avx2
#endif

namespace {

using namespace pykernels::flow_matching;
using Tensor = at::Tensor;
using Tensors2 = std::tuple<Tensor, Tensor>;

// The kernels: the AVX2 + FMA build where the CPU has it, else the baseline build.
const FlowKernels& kernels() {
#ifdef PK_HAVE_AVX2_BUILD
  if (use_avx2()) return avx2::flow_kernels();
#endif
  return generic::flow_kernels();
}

// Per-sample values ([N] sigmas, the loss gradient) in the accumulation dtype of x.
inline Tensor acc_copy(const Tensor& t, const Tensor& x) {
  return t.to(x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat).contiguous();
}

// An output like x, or an undefined tensor (an output nobody asked for).
inline Tensor output_like(const Tensor& x, bool want) {
  return want ? empty_output(x.sizes(), x.options()) : Tensor();
}

// ------------------------------------------------------------------------------ interpolate
Tensor flow_interpolate_cpu(const Tensor& x0_, const Tensor& noise_, const Tensor& sigmas) {
  check_interpolate("pykernels::flow_interpolate", x0_, noise_, sigmas, at::kCPU);
  const auto x0 = x0_.contiguous(), noise = noise_.contiguous();
  auto out = output_like(x0, true);
  kernels().interpolate(x0, noise, acc_copy(sigmas, x0), out);
  return out;
}

// grad [N, ...] in x0's dtype -> (grad_x0, grad_noise) = ((1 - sigma) grad, sigma grad).
Tensors2 flow_interpolate_backward_cpu(const Tensor& grad_, const Tensor& sigmas) {
  check_scale_backward("pykernels::flow_interpolate_backward", grad_, {{"sigmas", sigmas}},
                       at::kCPU);
  const auto grad = grad_.contiguous();
  auto gx = output_like(grad, true), gn = output_like(grad, true);
  kernels().interpolate_backward(grad, acc_copy(sigmas, grad), gx, gn);
  return {gx, gn};
}

// ------------------------------------------------------------------------------ loss
// -> (per-sample losses c(sigma) mean_i d_i^2 [N] in the accumulation dtype, x_t in the
// input dtype when return_noisy, else an empty tensor).
Tensors2 flow_matching_loss_cpu(const Tensor& m_, const Tensor& x0_, const Tensor& noise_,
                                const Tensor& sigmas_, c10::string_view weighting_scheme,
                                bool precondition_outputs, bool return_noisy) {
  const int64_t weighting = check_loss("pykernels::flow_matching_loss", m_, x0_, noise_, sigmas_,
                                       std::string(weighting_scheme), at::kCPU);
  const auto m = m_.contiguous(), x0 = x0_.contiguous(), noise = noise_.contiguous();
  const auto sigmas = acc_copy(sigmas_, m);
  const int64_t N = m.size(0), D = N == 0 ? 0 : m.numel() / N;
  auto partial = at::empty({N, flow_chunks(D)}, sigmas.options());
  auto noisy = output_like(m, return_noisy);
  kernels().loss(m, x0, noise, sigmas, {weighting, precondition_outputs}, partial, noisy);
  return {partial.sum(1), return_noisy ? noisy : at::empty({0}, m.options())};
}

// grad [N] (of the per-sample losses), grad_noisy (of x_t, or none) -> the gradients of
// model_output, x0, noise where output_mask asks for them (else empty tensors).
std::tuple<Tensor, Tensor, Tensor> flow_matching_loss_backward_cpu(
    const Tensor& grad, const c10::optional<Tensor>& grad_noisy_, const Tensor& m_,
    const Tensor& x0_, const Tensor& noise_, const Tensor& sigmas,
    c10::string_view weighting_scheme, bool precondition_outputs, std::array<bool, 3> output_mask) {
  const int64_t weighting =
      check_loss_backward("pykernels::flow_matching_loss_backward", grad, grad_noisy_, m_, x0_,
                          noise_, sigmas, std::string(weighting_scheme), at::kCPU);
  const auto m = m_.contiguous(), x0 = x0_.contiguous(), noise = noise_.contiguous();
  const auto grad_noisy = grad_noisy_.has_value() ? grad_noisy_->contiguous() : Tensor();
  std::array<Tensor, 3> out;
  for (int i = 0; i < 3; ++i) out[i] = output_like(m, output_mask[i]);
  kernels().loss_backward(acc_copy(grad, m), grad_noisy, m, x0, noise, acc_copy(sigmas, m),
                          {weighting, precondition_outputs}, out);
  for (auto& g : out) {
    if (!g.defined()) g = at::empty({0}, m.options());
  }
  return {out[0], out[1], out[2]};
}

// ------------------------------------------------------------------------------ Euler step
Tensor flow_match_euler_step_cpu(const Tensor& m_, const Tensor& sample_, const Tensor& sigmas,
                                 const Tensor& sigmas_next) {
  check_euler_step("pykernels::flow_match_euler_step", m_, sample_, sigmas, sigmas_next, at::kCPU);
  const auto m = m_.contiguous(), sample = sample_.contiguous();
  auto out = output_like(sample, true);
  kernels().euler_step(m, sample, acc_copy(sigmas, sample), acc_copy(sigmas_next, sample), out);
  return out;
}

// grad [N, ...] -> grad_model_output = (sigma_next - sigma) grad (grad_sample is grad).
Tensor flow_match_euler_step_backward_cpu(const Tensor& grad_, const Tensor& sigmas,
                                          const Tensor& sigmas_next) {
  check_scale_backward("pykernels::flow_match_euler_step_backward", grad_,
                       {{"sigmas", sigmas}, {"sigmas_next", sigmas_next}}, at::kCPU);
  const auto grad = grad_.contiguous();
  auto gm = output_like(grad, true);
  kernels().euler_step_backward(grad, acc_copy(sigmas, grad), acc_copy(sigmas_next, grad), gm);
  return gm;
}

}  // namespace
}  // namespace cpu
}  // namespace pykernels

TORCH_LIBRARY_IMPL(pykernels, CPU, m) {
  using namespace pykernels::cpu;
  m.impl("flow_interpolate", &flow_interpolate_cpu);
  m.impl("flow_interpolate_backward", &flow_interpolate_backward_cpu);
  m.impl("flow_matching_loss", &flow_matching_loss_cpu);
  m.impl("flow_matching_loss_backward", &flow_matching_loss_backward_cpu);
  m.impl("flow_match_euler_step", &flow_match_euler_step_cpu);
  m.impl("flow_match_euler_step_backward", &flow_match_euler_step_backward_cpu);
}
