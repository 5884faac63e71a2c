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

struct Cpu {
  static FusedLinearDevice device() {
    return {at::kCPU, &row_kernel, /*compact=*/true, /*in_place=*/true};
  }
};

}  // namespace
}  // namespace cpu
}  // namespace pykernels

TORCH_LIBRARY_IMPL(pykernels, CPU, m) {
  pykernels::FusedLinearOps<pykernels::cpu::Cpu>::register_impls(m);
}
