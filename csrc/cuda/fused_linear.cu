// CUDA ops of the fused linear + loss family: the chunk loop of common/fused_linear.h, its
// matmuls on cuBLAS (at::mm / at::addmm: tensor cores for bf16, fp16 and tf32), with the
// distillation family's CUDA row kernel (cuda/distillation.cu, distillation_kernel) as the
// per-chunk epilogue. That kernel reads its inputs through __restrict__ pointers, so the
// logit gradient goes to a buffer of its own, not over the logits. Every row goes through
// the matmuls: gathering the ignored rows out would need their count on the host.
#include <torch/library.h>

#include "common/fused_linear.h"

namespace pykernels {
namespace cuda {
namespace {

struct Cuda {
  static FusedLinearDevice device() {
    return {at::kCUDA, &distillation_rows_into, /*compact=*/false, /*in_place=*/false};
  }
};

}  // namespace
}  // namespace cuda
}  // namespace pykernels

TORCH_LIBRARY_IMPL(pykernels, CUDA, m) {
  pykernels::FusedLinearOps<pykernels::cuda::Cuda>::register_impls(m);
}
