// Argument checks of the distillation family, shared by the CPU and CUDA implementations,
// and the per-call settings every kernel of the family reads.
#pragma once
#include <cmath>

#include <ATen/OpMathType.h>

#include "common/checks.h"

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
// the CPU kernels only (reading them on a GPU would synchronise).
inline void check_labels(const char* op, const at::Tensor& labels, const at::Tensor& logits) {
  TORCH_CHECK_TYPE(labels.scalar_type() == at::kLong, op,
                   ": argument 'labels' must be int64, got ", labels.scalar_type());
  check_same_device(op, "labels", labels, "logits", logits);
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

// pykernels::distillation_scale_grad_ writes over x: it must be one dense block.
inline void check_scale_grad_inplace(const char* op, const at::Tensor& grad, const at::Tensor& x,
                                     at::DeviceType dev) {
  check_scale_grad(op, grad, x, dev);
  TORCH_CHECK_VALUE(x.is_contiguous(), op, ": argument 'x' must be contiguous (it is scaled in place)");
}

// What one call computes. The three ops of the family are one kernel:
//   distillation_loss:         teacher logits, optional labels (hard term);
//   cross_entropy:             no teacher, labels, hard_weight = 1;
//   soft_target_cross_entropy: teacher = target probabilities (probs = true).
struct DistillSettings {
  double temperature = 1.0, soft_weight = 0.0, hard_weight = 0.0, beta = 0.0, label_smoothing = 0.0;
  int64_t ignore_index = -100;
  bool soft = false;    // the soft term (teacher logits) is computed
  bool hard = false;    // the hard term (labels) is computed
  bool probs = false;   // soft-target cross entropy against teacher = probabilities
  bool grad_s = false;  // write the gradient w.r.t. the student logits
  bool grad_t = false;  // write the gradient w.r.t. the teacher (logits or probabilities)
};

// The inputs and outputs of one kernel call, on any device: contiguous inputs (teacher
// and labels may be undefined), per-row losses in the accumulation dtype, and the
// gradients the settings ask for (empty tensors otherwise).
struct DistillCall {
  at::Tensor s, t, labels, loss, grad_s, grad_t;
  int64_t V = 0, rows = 0;
};

inline DistillCall distill_call(const DistillSettings& st, const at::Tensor& s, const at::Tensor& t,
                                const at::Tensor& labels) {
  DistillCall c;
  c.s = s.contiguous();
  c.t = t.defined() ? t.contiguous() : t;
  c.labels = labels.defined() ? labels.contiguous() : labels;
  c.loss = at::empty(c.s.sizes().slice(0, c.s.dim() - 1), c.s.options().dtype(at::toOpMathType(c.s.scalar_type())));
  c.grad_s = st.grad_s ? at::empty_like(c.s) : at::empty({0}, c.s.options());
  c.grad_t = st.grad_t ? at::empty_like(c.t) : at::empty({0}, c.s.options());
  c.V = c.s.size(-1);
  c.rows = c.loss.numel();
  return c;
}

inline void check_distill_hparams(const char* op, double temperature, double soft_weight,
                                  double hard_weight, double beta, double label_smoothing) {
  check_positive(op, "temperature", temperature);
  check_finite(op, "temperature", temperature);
  check_finite(op, "soft_weight", soft_weight);
  check_finite(op, "hard_weight", hard_weight);
  check_unit_interval(op, "beta", beta);
  check_unit_interval(op, "label_smoothing", label_smoothing);
}

// The argument checks and settings of each op of the family, shared by the CPU and CUDA
// wrappers (dev: the device type the kernel runs on).
inline DistillSettings kd_settings(const char* op, at::DeviceType dev, const at::Tensor& student,
                                   const at::Tensor& teacher, bool has_labels, const at::Tensor& labels,
                                   double temperature, double soft_weight, double hard_weight, double beta,
                                   int64_t ignore_index, double label_smoothing, bool grad_student,
                                   bool grad_teacher) {
  check_logits(op, "student", student, dev);
  check_like(op, "teacher", teacher, "student", student);
  check_distill_hparams(op, temperature, soft_weight, hard_weight, beta, label_smoothing);
  if (has_labels) check_labels(op, labels, student);
  TORCH_CHECK_VALUE(has_labels || hard_weight == 0, op,
                    ": argument 'hard_weight' must be 0 when no labels are given, got ", hard_weight);
  DistillSettings st;
  st.temperature = temperature;
  st.soft_weight = soft_weight;
  st.hard_weight = hard_weight;
  st.beta = beta;
  st.label_smoothing = label_smoothing;
  st.ignore_index = ignore_index;
  st.soft = true;
  st.hard = has_labels && hard_weight != 0;
  st.grad_s = grad_student;
  st.grad_t = grad_teacher;
  return st;
}

inline DistillSettings ce_settings(const char* op, at::DeviceType dev, const at::Tensor& logits,
                                   const at::Tensor& labels, int64_t ignore_index, double label_smoothing,
                                   bool grad_logits) {
  check_logits(op, "logits", logits, dev);
  check_labels(op, labels, logits);
  check_unit_interval(op, "label_smoothing", label_smoothing);
  DistillSettings st;
  st.hard_weight = 1.0;
  st.label_smoothing = label_smoothing;
  st.ignore_index = ignore_index;
  st.hard = true;
  st.grad_s = grad_logits;
  return st;
}

inline DistillSettings soft_target_settings(const char* op, at::DeviceType dev, const at::Tensor& logits,
                                            const at::Tensor& target, double temperature, bool grad_logits,
                                            bool grad_target) {
  check_logits(op, "logits", logits, dev);
  check_like(op, "target", target, "logits", logits);
  check_positive(op, "temperature", temperature);
  check_finite(op, "temperature", temperature);
  DistillSettings st;
  st.temperature = temperature;
  st.probs = true;
  st.grad_s = grad_logits;
  st.grad_t = grad_target;
  return st;
}

}  // namespace pykernels
