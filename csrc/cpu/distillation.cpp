// CPU ops of the distillation family: the KD loss (soft term T^2 D_beta(p_T || p_S) plus an
// optional hard cross entropy), cross entropy, and soft-target cross entropy, and the
// backward's scaling of the saved gradient. The kernels are in cpu/distillation_kernels.h,
// built twice: here with the baseline flags (namespace generic) and in
// distillation_avx2.cpp for AVX2 + FMA (namespace avx2); kernels() picks one at run time.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

#include "common/cpu_capability.h"
#include "common/cpu_vec.h"
#include "common/dispatch.h"
#include "common/distillation_args.h"

#define PK_DISTILL_NS generic
#include "cpu/distillation_kernels.h"

namespace pykernels {
namespace cpu {

#ifdef PK_HAVE_AVX2_BUILD
namespace avx2 {  // distillation_avx2.cpp
std::tuple<at::Tensor, at::Tensor, at::Tensor> run_rows(const DistillSettings& st, const at::Tensor& s,
                                                        const at::Tensor& t, const at::Tensor& labels);
void scale_rows(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& out);
}  // namespace avx2
#endif

namespace {

// The kernels: the AVX2 + FMA build where the CPU has it, else the baseline build.
struct Kernels {
  std::tuple<at::Tensor, at::Tensor, at::Tensor> (*run_rows)(const DistillSettings&, const at::Tensor&,
                                                             const at::Tensor&, const at::Tensor&);
  void (*scale_rows)(const at::Tensor&, const at::Tensor&, const at::Tensor&);
};

const Kernels& kernels() {
#ifdef PK_HAVE_AVX2_BUILD
  if (use_avx2()) {
    static const Kernels k{&avx2::run_rows, &avx2::scale_rows};
    return k;
  }
#endif
  static const Kernels k{&generic::run_rows, &generic::scale_rows};
  return k;
}

void check_label_values(const char* op, const at::Tensor& labels, int64_t V, int64_t ignore_index) {
  const int64_t* p = labels.const_data_ptr<int64_t>();
  for (int64_t r = 0; r < labels.numel(); ++r) {
    TORCH_CHECK_INDEX(p[r] == ignore_index || (p[r] >= 0 && p[r] < V), op,
                      ": argument 'labels' must be in [0, ", V, ") or ignore_index (", ignore_index,
                      "), got ", p[r], " at row ", r);
  }
}


// Checks the labels (on the host: these are CPU tensors), then runs the kernel.
std::tuple<at::Tensor, at::Tensor, at::Tensor> run_rows(const char* op, const DistillSettings& st,
                                                        const at::Tensor& s, const at::Tensor& t,
                                                        const at::Tensor& labels) {
  if (labels.defined()) check_label_values(op, labels.contiguous(), s.size(-1), st.ignore_index);
  return kernels().run_rows(st, s, t, labels);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> distillation_loss_cpu(
    const at::Tensor& student, const at::Tensor& teacher, const c10::optional<at::Tensor>& labels,
    double temperature, double soft_weight, double hard_weight, double beta, int64_t ignore_index,
    double label_smoothing, bool grad_student, bool grad_teacher) {
  const char* op = "pykernels::distillation_loss";
  const bool has_labels = labels.has_value() && labels->defined();
  const at::Tensor y = has_labels ? *labels : at::Tensor();
  const auto st = kd_settings(op, at::kCPU, student, teacher, has_labels, y, temperature, soft_weight, hard_weight,
                              beta, ignore_index, label_smoothing, grad_student, grad_teacher);
  return run_rows(op, st, student, teacher, y);
}

std::tuple<at::Tensor, at::Tensor> cross_entropy_cpu(const at::Tensor& logits, const at::Tensor& labels,
                                                     int64_t ignore_index, double label_smoothing,
                                                     bool grad_logits) {
  const char* op = "pykernels::cross_entropy";
  const auto st = ce_settings(op, at::kCPU, logits, labels, ignore_index, label_smoothing, grad_logits);
  auto [loss, g, unused] = run_rows(op, st, logits, at::Tensor(), labels);
  return {loss, g};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> soft_target_cross_entropy_cpu(
    const at::Tensor& logits, const at::Tensor& target, double temperature, bool grad_logits,
    bool grad_target) {
  const char* op = "pykernels::soft_target_cross_entropy";
  const auto st = soft_target_settings(op, at::kCPU, logits, target, temperature, grad_logits, grad_target);
  return run_rows(op, st, logits, target, at::Tensor());
}

at::Tensor distillation_scale_grad_cpu(const at::Tensor& grad, const at::Tensor& x) {
  const char* op = "pykernels::distillation_scale_grad";
  check_scale_grad(op, grad, x, at::kCPU);
  const auto xc = x.contiguous();
  auto out = at::empty_like(xc);
  kernels().scale_rows(grad, xc, out);
  return out;
}

void distillation_scale_grad_inplace_cpu(const at::Tensor& grad, const at::Tensor& x) {
  const char* op = "pykernels::distillation_scale_grad_";
  check_scale_grad_inplace(op, grad, x, at::kCPU);
  kernels().scale_rows(grad, x, x);
}

}  // namespace
}  // namespace cpu
}  // namespace pykernels

TORCH_LIBRARY_IMPL(pykernels, CPU, m) {
  using namespace pykernels::cpu;
  m.impl("distillation_loss", &distillation_loss_cpu);
  m.impl("cross_entropy", &cross_entropy_cpu);
  m.impl("soft_target_cross_entropy", &soft_target_cross_entropy_cpu);
  m.impl("distillation_scale_grad", &distillation_scale_grad_cpu);
  m.impl("distillation_scale_grad_", &distillation_scale_grad_inplace_cpu);
}
