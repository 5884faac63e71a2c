// CPU ops of the fused linear + loss family: the chunk loop of common/fused_linear.h with
// the distillation family's CPU row kernel (cpu/distillation_kernels.h), which writes each
// chunk's logit gradient over its logits. Ignored rows are gathered out before the matmuls.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "common/fused_linear.h"

namespace pykernels {
namespace cpu {
namespace {

// The row kernel; a counted row of all -inf logits (an all -inf bias) has no distribution.
void row_kernel(const DistillationSettings& st, const DistillationTensors& c) {
  TORCH_CHECK_VALUE(distillation_rows_into(st, c), st.op,
                    ": a counted row's logits are all -inf (from the bias): it has no "
                    "probability distribution; give such rows the label ignore_index");
}

const FusedLinearDevice kCpu{at::kCPU, &row_kernel, /*compact=*/true, /*in_place=*/true};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
fused_linear_cross_entropy_cpu(const at::Tensor& hidden, const at::Tensor& weight,
                               const at::Tensor& labels, const c10::optional<at::Tensor>& bias,
                               int64_t ignore_index, double label_smoothing, double softcap,
                               double z_loss, int64_t chunk_size, bool reduce, double grad_scale,
                               bool return_lse, std::array<bool, 3> grad_mask) {
  return fused_linear_cross_entropy_op(kCpu, hidden, weight, labels, bias, ignore_index,
                                       label_smoothing, softcap, z_loss, chunk_size, reduce,
                                       grad_scale, return_lse, grad_mask);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fused_linear_cross_entropy_backward_cpu(
    const at::Tensor& grad, const at::Tensor& hidden, const at::Tensor& weight,
    const at::Tensor& labels, const c10::optional<at::Tensor>& bias, int64_t ignore_index,
    double label_smoothing, double softcap, double z_loss, int64_t chunk_size,
    std::array<bool, 3> grad_mask) {
  return fused_linear_cross_entropy_backward_op(kCpu, grad, hidden, weight, labels, bias,
                                                ignore_index, label_smoothing, softcap, z_loss,
                                                chunk_size, grad_mask);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
fused_linear_distillation_loss_cpu(
    const at::Tensor& student_hidden, const at::Tensor& student_weight,
    const at::Tensor& teacher_hidden, const at::Tensor& teacher_weight,
    const c10::optional<at::Tensor>& labels, const c10::optional<at::Tensor>& student_bias,
    const c10::optional<at::Tensor>& teacher_bias, double temperature, double soft_weight,
    double hard_weight, double beta, int64_t ignore_index, double label_smoothing,
    int64_t chunk_size, bool reduce, double grad_scale, std::array<bool, 6> grad_mask) {
  return fused_linear_distillation_loss_op(
      kCpu, student_hidden, student_weight, teacher_hidden, teacher_weight, labels, student_bias,
      teacher_bias, temperature, soft_weight, hard_weight, beta, ignore_index, label_smoothing,
      chunk_size, reduce, grad_scale, grad_mask);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
fused_linear_distillation_loss_backward_cpu(
    const at::Tensor& grad, const at::Tensor& student_hidden, const at::Tensor& student_weight,
    const at::Tensor& teacher_hidden, const at::Tensor& teacher_weight,
    const c10::optional<at::Tensor>& labels, const c10::optional<at::Tensor>& student_bias,
    const c10::optional<at::Tensor>& teacher_bias, double temperature, double soft_weight,
    double hard_weight, double beta, int64_t ignore_index, double label_smoothing,
    int64_t chunk_size, std::array<bool, 6> grad_mask) {
  return fused_linear_distillation_loss_backward_op(
      kCpu, grad, student_hidden, student_weight, teacher_hidden, teacher_weight, labels,
      student_bias, teacher_bias, temperature, soft_weight, hard_weight, beta, ignore_index,
      label_smoothing, chunk_size, grad_mask);
}

}  // namespace
}  // namespace cpu
}  // namespace pykernels

TORCH_LIBRARY_IMPL(pykernels, CPU, m) {
  using namespace pykernels::cpu;
  m.impl("fused_linear_cross_entropy", &fused_linear_cross_entropy_cpu);
  m.impl("fused_linear_cross_entropy_backward", &fused_linear_cross_entropy_backward_cpu);
  m.impl("fused_linear_distillation_loss", &fused_linear_distillation_loss_cpu);
  m.impl("fused_linear_distillation_loss_backward", &fused_linear_distillation_loss_backward_cpu);
}
