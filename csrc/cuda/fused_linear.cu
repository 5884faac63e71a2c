// CUDA ops of the fused linear + loss family: the chunk loop of common/fused_linear.h, its
// matmuls on cuBLAS (at::mm / at::addmm: tensor cores for bf16, fp16 and tf32), with the
// distillation family's CUDA row kernel (cuda/distillation.cu, distillation_kernel) as the
// per-chunk epilogue. That kernel reads its inputs through __restrict__ pointers, so the
// logit gradient goes to a buffer of its own, not over the logits. Every row goes through
// the matmuls: gathering the ignored rows out would need their count on the host.
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/fused_linear.h"

namespace pykernels {
namespace cuda {
namespace {

const FusedLinearDevice kCuda{at::kCUDA, &distillation_rows_into, /*compact=*/false,
                              /*in_place=*/false};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
fused_linear_cross_entropy_cuda(const at::Tensor& hidden, const at::Tensor& weight,
                                const at::Tensor& labels, const c10::optional<at::Tensor>& bias,
                                int64_t ignore_index, double label_smoothing, double softcap,
                                double z_loss, int64_t chunk_size, bool reduce,
                                double grad_scale, bool return_lse,
                                std::array<bool, 3> grad_mask) {
  c10::cuda::CUDAGuard guard(hidden.device());
  return fused_linear_cross_entropy_op(kCuda, hidden, weight, labels, bias, ignore_index,
                                       label_smoothing, softcap, z_loss, chunk_size, reduce,
                                       grad_scale, return_lse, grad_mask);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fused_linear_cross_entropy_backward_cuda(
    const at::Tensor& grad, const at::Tensor& hidden, const at::Tensor& weight,
    const at::Tensor& labels, const c10::optional<at::Tensor>& bias, int64_t ignore_index,
    double label_smoothing, double softcap, double z_loss, int64_t chunk_size,
    std::array<bool, 3> grad_mask) {
  c10::cuda::CUDAGuard guard(hidden.device());
  return fused_linear_cross_entropy_backward_op(kCuda, grad, hidden, weight, labels, bias,
                                                ignore_index, label_smoothing, softcap, z_loss,
                                                chunk_size, grad_mask);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
fused_linear_distillation_loss_cuda(
    const at::Tensor& student_hidden, const at::Tensor& student_weight,
    const at::Tensor& teacher_hidden, const at::Tensor& teacher_weight,
    const c10::optional<at::Tensor>& labels, const c10::optional<at::Tensor>& student_bias,
    const c10::optional<at::Tensor>& teacher_bias, double temperature, double soft_weight,
    double hard_weight, double beta, int64_t ignore_index, double label_smoothing,
    int64_t chunk_size, bool reduce, double grad_scale, std::array<bool, 6> grad_mask) {
  c10::cuda::CUDAGuard guard(student_hidden.device());
  return fused_linear_distillation_loss_op(
      kCuda, student_hidden, student_weight, teacher_hidden, teacher_weight, labels,
      student_bias, teacher_bias, temperature, soft_weight, hard_weight, beta, ignore_index,
      label_smoothing, chunk_size, reduce, grad_scale, grad_mask);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
fused_linear_distillation_loss_backward_cuda(
    const at::Tensor& grad, const at::Tensor& student_hidden, const at::Tensor& student_weight,
    const at::Tensor& teacher_hidden, const at::Tensor& teacher_weight,
    const c10::optional<at::Tensor>& labels, const c10::optional<at::Tensor>& student_bias,
    const c10::optional<at::Tensor>& teacher_bias, double temperature, double soft_weight,
    double hard_weight, double beta, int64_t ignore_index, double label_smoothing,
    int64_t chunk_size, std::array<bool, 6> grad_mask) {
  c10::cuda::CUDAGuard guard(student_hidden.device());
  return fused_linear_distillation_loss_backward_op(
      kCuda, grad, student_hidden, student_weight, teacher_hidden, teacher_weight, labels,
      student_bias, teacher_bias, temperature, soft_weight, hard_weight, beta, ignore_index,
      label_smoothing, chunk_size, grad_mask);
}

}  // namespace
}  // namespace cuda
}  // namespace pykernels

TORCH_LIBRARY_IMPL(pykernels, CUDA, m) {
  using namespace pykernels::cuda;
  m.impl("fused_linear_cross_entropy", &fused_linear_cross_entropy_cuda);
  m.impl("fused_linear_cross_entropy_backward", &fused_linear_cross_entropy_backward_cuda);
  m.impl("fused_linear_distillation_loss", &fused_linear_distillation_loss_cuda);
  m.impl("fused_linear_distillation_loss_backward",
         &fused_linear_distillation_loss_backward_cuda);
}
