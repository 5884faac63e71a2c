// CPU ops of the distillation family: distillation_loss (soft term T^2 D_beta(p_T || p_S)
// plus an optional hard cross entropy), cross_entropy, soft_target_cross_entropy, and the
// backward's scaling of the saved gradient (distillation_scale_grad[_inplace]).
//
// The kernels are in cpu/distillation_kernels.h. This file builds them with the baseline
// flags (namespace generic), cpu/distillation_avx2.cpp for AVX2 + FMA (namespace avx2), and
// kernels() picks one at run time (common/cpu_capability.h).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

#ifdef __linux__
#include <sys/mman.h>  // madvise (map_pages)
#endif

#include "common/cpu_capability.h"
#include "common/cpu_vec.h"
#include "common/dispatch.h"
#include "common/distillation_args.h"
#include "common/output_memory.h"

#define PK_DISTILLATION_NS generic
#include "cpu/distillation_kernels.h"

namespace pykernels {
namespace cpu {

#ifdef PK_HAVE_AVX2_BUILD
namespace avx2 {  // distillation_avx2.cpp
bool distillation_rows(const DistillationSettings& st, const DistillationTensors& c);
void scale_grad(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& out);
}  // namespace avx2
#endif

namespace {

// The kernels: the AVX2 + FMA build where the CPU has it, else the baseline build.
struct Kernels {
  bool (*distillation_rows)(const DistillationSettings&, const DistillationTensors&);
  void (*scale_grad)(const at::Tensor&, const at::Tensor&, const at::Tensor&);
};

const Kernels& kernels() {
#ifdef PK_HAVE_AVX2_BUILD
  if (use_avx2()) {
    static const Kernels k{&avx2::distillation_rows, &avx2::scale_grad};
    return k;
  }
#endif
  static const Kernels k{&generic::distillation_rows, &generic::scale_grad};
  return k;
}

// The first counted row of x [rows, V] whose values are all -inf, or -1.
int64_t first_masked_row(const at::Tensor& x, const at::Tensor& labels, int64_t ignore_index) {
  auto masked = x.reshape({-1, x.size(-1)}).isneginf().all(-1);
  if (labels.defined()) masked &= labels.reshape({-1}) != ignore_index;
  const auto rows = masked.nonzero();
  return rows.numel() == 0 ? -1 : rows[0][0].item<int64_t>();
}

// A counted row whose logits are all -inf has no distribution: a clear error on CPU
// tensors, naming the argument and the row (the CUDA kernels give that row nan instead).
void report_masked_row(const DistillationSettings& st, const DistillationTensors& c) {
  std::array<std::pair<const char*, at::Tensor>, 2> inputs{
      {{st.logits_arg, c.logits},
       {st.teacher_arg, st.soft == SoftTarget::kTeacherLogits ? c.teacher : at::Tensor()}}};
  for (const auto& [arg, x] : inputs) {
    if (!x.defined()) continue;
    const int64_t r = first_masked_row(x, c.labels, st.ignore_index);
    TORCH_CHECK_VALUE(r < 0, st.op, ": argument '", arg, "' has a row whose logits are all -inf",
                      " (row ", r, " of the flattened rows): it has no probability distribution;",
                      " give such rows the label ignore_index");
  }
}

// Checks the label values (on the host: these are CPU tensors), then runs the kernel.
struct Rows {
  static std::tuple<at::Tensor, at::Tensor, at::Tensor> run(const DistillationSettings& st,
                                                            const at::Tensor& logits,
                                                            const at::Tensor& teacher,
                                                            const at::Tensor& labels) {
    const DistillationTensors c = distillation_tensors(st, logits, teacher, labels);
    if (c.labels.defined()) check_label_values(st, c.labels, c.V);
    if (!kernels().distillation_rows(st, c)) report_masked_row(st, c);
    return {c.loss, c.grad_logits, c.grad_teacher};
  }
};
using Ops = DistillationOps<at::kCPU, Rows>;

at::Tensor distillation_scale_grad_cpu(const at::Tensor& grad, const at::Tensor& x) {
  check_scale_grad("pykernels::distillation_scale_grad", grad, x, at::kCPU);
  const auto xc = x.contiguous();
  auto out = empty_output_like(xc);
  kernels().scale_grad(grad, xc, out);
  return out;
}

void distillation_scale_grad_inplace_cpu(const at::Tensor& grad, const at::Tensor& x) {
  check_scale_grad_inplace("pykernels::distillation_scale_grad_inplace", grad, x, at::kCPU);
  kernels().scale_grad(grad, x, x);
}

}  // namespace

void check_label_values(const DistillationSettings& st, const at::Tensor& labels, int64_t V) {
  const int64_t* p = labels.const_data_ptr<int64_t>();
  for (int64_t r = 0; r < labels.numel(); ++r) {
    TORCH_CHECK_INDEX(p[r] == st.ignore_index || (p[r] >= 0 && p[r] < V), st.op,
                      ": argument 'labels' must be in [0, ", V, ") or ignore_index (",
                      st.ignore_index, "), got ", p[r], " at row ", r);
  }
}

bool distillation_rows_into(const DistillationSettings& st, const DistillationTensors& c) {
  return c.rows == 0 || kernels().distillation_rows(st, c);
}

}  // namespace cpu
}  // namespace pykernels

TORCH_LIBRARY_IMPL(pykernels, CPU, m) {
  using namespace pykernels::cpu;
  m.impl("distillation_loss", &Ops::distillation_loss);
  m.impl("cross_entropy", &Ops::cross_entropy);
  m.impl("soft_target_cross_entropy", &Ops::soft_target_cross_entropy);
  m.impl("distillation_scale_grad", &distillation_scale_grad_cpu);
  m.impl("distillation_scale_grad_inplace", &distillation_scale_grad_inplace_cpu);
}
