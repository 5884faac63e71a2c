// Argument checks and per-call settings of the distillation family, shared by the CPU
// (cpu/distillation.cpp) and CUDA (cuda/distillation.cu) ops. Argument names are the
// public functions' (student_logits, teacher_logits, logits, target_probs, labels, ...).
#pragma once
#include <cmath>
#include <tuple>

#include <ATen/OpMathType.h>

#include "common/checks.h"
#include "common/output_memory.h"

namespace pykernels {

// Logits [..., V] with V >= 1: float, on a device of the given type.
inline void check_logits(const char* op, const char* arg, const at::Tensor& x, at::DeviceType dev) {
  check_float(op, arg, x);
  check_device_type(op, arg, x, dev);
  check_min_dim(op, arg, x, 1);
  TORCH_CHECK_VALUE(x.size(-1) >= 1, op, ": argument '", arg,
                    "' must have at least one class (last dim), got shape ", x.sizes());
}

// A second [..., V] tensor that must match the first in shape, dtype and device.
inline void check_like(const char* op, const char* arg, const at::Tensor& t, const char* ref_arg,
                       const at::Tensor& ref) {
  check_float(op, arg, t);
  check_same_device(op, arg, t, ref_arg, ref);
  check_same_dtype(op, arg, t, ref_arg, ref);
  check_same_shape(op, arg, t, ref_arg, ref);
}

// labels: int64, shape [...] of logits [..., V], same device. Their values are checked by
// the CPU op only (reading them on a GPU would synchronise).
inline void check_labels(const char* op, const at::Tensor& labels, const char* logits_arg,
                         const at::Tensor& logits) {
  TORCH_CHECK_TYPE(labels.scalar_type() == at::kLong, op, ": argument 'labels' must be int64, got ",
                   labels.scalar_type());
  check_same_device(op, "labels", labels, logits_arg, logits);
  const auto rows = logits.sizes().slice(0, logits.dim() - 1);
  TORCH_CHECK_VALUE(labels.sizes() == rows, op, ": argument 'labels' must have shape ", rows,
                    " (the logits' shape without the last dim), got ", labels.sizes());
}

inline void check_unit_interval(const char* op, const char* arg, double v) {
  TORCH_CHECK_VALUE(v >= 0.0 && v <= 1.0, op, ": argument '", arg, "' must be in [0, 1], got ", v);
}

inline void check_finite(const char* op, const char* arg, double v) {
  TORCH_CHECK_VALUE(std::isfinite(v), op, ": argument '", arg, "' must be finite, got ", v);
}

inline void check_temperature(const char* op, double temperature) {
  check_positive(op, "temperature", temperature);
  check_finite(op, "temperature", temperature);
}

// grad [...] and the saved per-row gradient x [..., V] of pykernels::distillation_scale_grad.
inline void check_scale_grad(const char* op, const at::Tensor& grad, const at::Tensor& x,
                             at::DeviceType dev) {
  check_float(op, "x", x);
  check_device_type(op, "x", x, dev);
  check_min_dim(op, "x", x, 1);
  check_float(op, "grad", grad);
  check_same_device(op, "grad", grad, "x", x);
  TORCH_CHECK_VALUE(grad.sizes() == x.sizes().slice(0, x.dim() - 1), op,
                    ": argument 'grad' must have shape ", x.sizes().slice(0, x.dim() - 1), ", got ",
                    grad.sizes());
}

// pykernels::distillation_scale_grad_inplace writes over x: it must be one dense block.
inline void check_scale_grad_inplace(const char* op, const at::Tensor& grad, const at::Tensor& x,
                                     at::DeviceType dev) {
  check_scale_grad(op, grad, x, dev);
  TORCH_CHECK_VALUE(x.is_contiguous(), op,
                    ": argument 'x' must be contiguous (it is scaled in place)");
}

// The family's three ops are one kernel; what the second input holds:
//   distillation_loss:         kTeacherLogits (the soft term), labels optional (hard term);
//   cross_entropy:             kNone, labels (the hard term alone, hard_weight = 1);
//   soft_target_cross_entropy: kTargetProbs (target probabilities).
enum class SoftTarget { kNone, kTeacherLogits, kTargetProbs };

// What one call computes, and the names its error messages use.
struct DistillationSettings {
  const char* op = "";
  const char* logits_arg = "";   // the first input: student_logits or logits
  const char* teacher_arg = "";  // the second input: teacher_logits or target_probs
  double temperature = 1.0, soft_weight = 0.0, hard_weight = 0.0, beta = 0.0;
  double label_smoothing = 0.0;
  int64_t ignore_index = -100;
  SoftTarget soft = SoftTarget::kNone;
  bool hard = false;          // the hard term (labels) is computed
  bool grad_logits = false;   // write the gradient w.r.t. the first input
  bool grad_teacher = false;  // write the gradient w.r.t. the second input
  // The gradients written are those of grad_scale * (row loss): the weight the public
  // function's reduction gives each row, where it knows it, so that a plain backward finds
  // the gradient ready and makes no second pass over it.
  double grad_scale = 1.0;
};

inline void check_grad_scale(DistillationSettings& st, double grad_scale) {
  check_finite(st.op, "grad_scale", grad_scale);
  st.grad_scale = grad_scale;
}

// The inputs and outputs of one kernel call, on any device: contiguous inputs (teacher
// and labels may be undefined), per-row losses in the accumulation dtype, and the
// gradients the settings ask for (empty tensors otherwise).
struct DistillationTensors {
  at::Tensor logits, teacher, labels, loss, grad_logits, grad_teacher;
  int64_t V = 0, rows = 0;
};

inline DistillationTensors distillation_tensors(const DistillationSettings& st,
                                                const at::Tensor& logits, const at::Tensor& teacher,
                                                const at::Tensor& labels) {
  DistillationTensors c;
  c.logits = logits.contiguous();
  c.teacher = teacher.defined() ? teacher.contiguous() : teacher;
  c.labels = labels.defined() ? labels.contiguous() : labels;
  const auto acc = at::toOpMathType(c.logits.scalar_type());
  c.loss = at::empty(c.logits.sizes().slice(0, c.logits.dim() - 1), c.logits.options().dtype(acc));
  c.grad_logits = st.grad_logits ? empty_output_like(c.logits) : at::empty({0}, c.logits.options());
  c.grad_teacher =
      st.grad_teacher ? empty_output_like(c.teacher) : at::empty({0}, c.logits.options());
  c.V = c.logits.size(-1);
  c.rows = c.loss.numel();
  return c;
}

// The settings of an op with a second input (teacher logits or target probabilities), after
// the checks they share.
inline DistillationSettings settings_with_teacher(const char* op, const char* logits_arg,
                                                  const char* teacher_arg, at::DeviceType dev,
                                                  const at::Tensor& logits,
                                                  const at::Tensor& teacher, double temperature) {
  DistillationSettings st;
  st.op = op;
  st.logits_arg = logits_arg;
  st.teacher_arg = teacher_arg;
  check_logits(op, logits_arg, logits, dev);
  check_like(op, teacher_arg, teacher, logits_arg, logits);
  check_temperature(op, temperature);
  st.temperature = temperature;
  return st;
}

// The family's row kernel into outputs the caller owns (c.loss, c.grad_logits and
// c.grad_teacher, which may alias c.logits and c.teacher: each row's gradient is written
// after the row's last read), for ops that run it on buffers of their own (the fused
// linear + loss ops, csrc/common/fused_linear.h). c's inputs are contiguous. The CPU
// version returns false when a counted row is all -inf; the CUDA one gives such rows nan.
namespace cpu {
void check_label_values(const DistillationSettings& st, const at::Tensor& labels, int64_t V);
bool distillation_rows_into(const DistillationSettings& st, const DistillationTensors& c);
}  // namespace cpu
namespace cuda {
void distillation_rows_into(const DistillationSettings& st, const DistillationTensors& c);
}  // namespace cuda

// distillation_loss's terms into st (the values checked by the caller): the soft term of
// the teacher's logits, and the hard term where there are labels and hard_weight != 0.
inline void set_distillation_terms(DistillationSettings& st, double temperature, double soft_weight,
                                   double hard_weight, double beta, int64_t ignore_index,
                                   double label_smoothing, bool has_labels) {
  st.temperature = temperature;
  st.soft_weight = soft_weight;
  st.hard_weight = hard_weight;
  st.beta = beta;
  st.label_smoothing = label_smoothing;
  st.ignore_index = ignore_index;
  st.soft = SoftTarget::kTeacherLogits;
  st.hard = has_labels && hard_weight != 0;
}

// The checks and settings of each op, shared by the CPU and CUDA wrappers (dev: the device
// type the kernel runs on).
inline DistillationSettings distillation_loss_settings(
    at::DeviceType dev, const at::Tensor& student_logits, const at::Tensor& teacher_logits,
    const at::Tensor& labels, double temperature, double soft_weight, double hard_weight,
    double beta, int64_t ignore_index, double label_smoothing, bool grad_student_logits,
    bool grad_teacher_logits, double grad_scale) {
  DistillationSettings st =
      settings_with_teacher("pykernels::distillation_loss", "student_logits", "teacher_logits", dev,
                            student_logits, teacher_logits, temperature);
  check_finite(st.op, "soft_weight", soft_weight);
  check_finite(st.op, "hard_weight", hard_weight);
  check_unit_interval(st.op, "beta", beta);
  check_unit_interval(st.op, "label_smoothing", label_smoothing);
  if (labels.defined()) check_labels(st.op, labels, st.logits_arg, student_logits);
  TORCH_CHECK_VALUE(labels.defined() || hard_weight == 0, st.op,
                    ": argument 'hard_weight' must be 0 when no labels are given, got ",
                    hard_weight);
  set_distillation_terms(st, temperature, soft_weight, hard_weight, beta, ignore_index,
                         label_smoothing, labels.defined());
  st.grad_logits = grad_student_logits;
  st.grad_teacher = grad_teacher_logits;
  check_grad_scale(st, grad_scale);
  return st;
}

inline DistillationSettings cross_entropy_settings(at::DeviceType dev, const at::Tensor& logits,
                                                   const at::Tensor& labels, int64_t ignore_index,
                                                   double label_smoothing, bool grad_logits,
                                                   double grad_scale) {
  DistillationSettings st;
  st.op = "pykernels::cross_entropy";
  st.logits_arg = "logits";
  check_logits(st.op, st.logits_arg, logits, dev);
  check_labels(st.op, labels, st.logits_arg, logits);
  check_unit_interval(st.op, "label_smoothing", label_smoothing);
  st.hard_weight = 1.0;
  st.label_smoothing = label_smoothing;
  st.ignore_index = ignore_index;
  st.hard = true;
  st.grad_logits = grad_logits;
  check_grad_scale(st, grad_scale);
  return st;
}

inline DistillationSettings soft_target_cross_entropy_settings(
    at::DeviceType dev, const at::Tensor& logits, const at::Tensor& target_probs,
    double temperature, bool grad_logits, bool grad_target_probs, double grad_scale) {
  DistillationSettings st =
      settings_with_teacher("pykernels::soft_target_cross_entropy", "logits", "target_probs", dev,
                            logits, target_probs, temperature);
  st.soft = SoftTarget::kTargetProbs;
  st.grad_logits = grad_logits;
  st.grad_teacher = grad_target_probs;
  check_grad_scale(st, grad_scale);
  return st;
}

// The family's three ops on one device type: the checks and settings above, then
// Rows::run(settings, logits, teacher, labels) -> (per-row losses, gradient w.r.t. the
// logits, gradient w.r.t. the teacher), the device's kernel. Registered by cpu/distillation.cpp
// and cuda/distillation.cu.
template <at::DeviceType kDevice, typename Rows>
struct DistillationOps {
  using Outputs = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

  static Outputs distillation_loss(const at::Tensor& student_logits,
                                   const at::Tensor& teacher_logits,
                                   const c10::optional<at::Tensor>& labels, double temperature,
                                   double soft_weight, double hard_weight, double beta,
                                   int64_t ignore_index, double label_smoothing,
                                   bool grad_student_logits, bool grad_teacher_logits,
                                   double grad_scale) {
    const at::Tensor y = labels.has_value() ? *labels : at::Tensor();
    const auto st = distillation_loss_settings(
        kDevice, student_logits, teacher_logits, y, temperature, soft_weight, hard_weight, beta,
        ignore_index, label_smoothing, grad_student_logits, grad_teacher_logits, grad_scale);
    return Rows::run(st, student_logits, teacher_logits, y);
  }

  static std::tuple<at::Tensor, at::Tensor> cross_entropy(const at::Tensor& logits,
                                                          const at::Tensor& labels,
                                                          int64_t ignore_index,
                                                          double label_smoothing, bool grad_logits,
                                                          double grad_scale) {
    const auto st = cross_entropy_settings(kDevice, logits, labels, ignore_index, label_smoothing,
                                           grad_logits, grad_scale);
    auto [loss, grad, unused] = Rows::run(st, logits, at::Tensor(), labels);
    return {loss, grad};
  }

  static Outputs soft_target_cross_entropy(const at::Tensor& logits, const at::Tensor& target_probs,
                                           double temperature, bool grad_logits,
                                           bool grad_target_probs, double grad_scale) {
    const auto st = soft_target_cross_entropy_settings(kDevice, logits, target_probs, temperature,
                                                       grad_logits, grad_target_probs, grad_scale);
    return Rows::run(st, logits, target_probs, at::Tensor());
  }
};

}  // namespace pykernels
