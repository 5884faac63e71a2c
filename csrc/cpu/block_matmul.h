// The block loop and block products of the tiled CPU losses (contrastive, sigmoid_contrastive):
// an [N, M] matrix of products I T^T is taken in blocks of R rows x C columns, each one BLAS
// product, and never stored whole. Inline functions with baseline flags: include only from
// baseline translation units (not between cpu_avx2_begin.h and cpu_avx2_end.h).
#pragma once
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <algorithm>
#include <optional>
#include <vector>

namespace pykernels {
namespace cpu {

// The blocks of the [N, M] logits: R rows x C columns, R C <= 2^21 elements (8 MB in float32),
// so the backward's peak, the two feature gradients plus a block and its products, stays
// under a tenth of what the [N, M] logits and their gradient take (N = M = 8192, D = 512: 49
// MB against 512 MB for torch.compile of the composition). C <= 2048 columns keeps each
// product large enough for the BLAS library's full speed.
struct Blocking {
  int64_t R, C;
};

inline Blocking blocking(int64_t N, int64_t M) {
  const int64_t C = std::max<int64_t>(1, std::min<int64_t>(M, 2048));
  return {std::max<int64_t>(1, std::min<int64_t>(N, (int64_t(1) << 21) / C)), C};
}

// f(r0, rows, c0, cols) for every block, row blocks outer, in a fixed order.
template <typename F>
void for_each_block(int64_t N, int64_t M, F&& f) {
  const Blocking b = blocking(N, M);
  for (int64_t r0 = 0; r0 < N; r0 += b.R) {
    for (int64_t c0 = 0; c0 < M; c0 += b.C) f(r0, std::min(b.R, N - r0), c0, std::min(b.C, M - c0));
  }
}

// oneDNN's matmul as PyTorch registers it (mkldnn::_linear_pointwise(X, W, ...) = X W^T, the
// op Inductor's CPU path runs linear layers with), when this PyTorch build has it.
inline const std::optional<c10::OperatorHandle>& onednn_linear() {
  static const auto handle = c10::Dispatcher::singleton().findOp({"mkldnn::_linear_pointwise", ""});
  return handle;
}

// Whether a b^T runs on oneDNN: float32, where PyTorch has it, for products of at least 2^26
// multiply-adds. On CPUs where MKL takes its AVX2 path (AMD), oneDNN's AVX-512 kernels ran the
// block products 1.5-2x faster than at::mm; on small products its weight reorders (about two
// operands' worth of temporary memory) and set-up cost more than they save.
inline bool on_onednn(const at::Tensor& a, const at::Tensor& b) {
  return onednn_linear().has_value() && a.scalar_type() == at::kFloat &&
         a.size(0) * a.size(1) * b.size(0) >= (int64_t(1) << 26);
}

// a b^T for a [R, K] and b [M, K] (either may be a transposed view), contiguous.
inline at::Tensor matmul_nt(const at::Tensor& a, const at::Tensor& b) {
  if (!on_onednn(a, b)) return at::mm(a, b.t());
  std::vector<c10::IValue> stack{a,
                                 b,
                                 c10::IValue(),
                                 c10::IValue("none"),
                                 c10::IValue(c10::List<std::optional<at::Scalar>>()),
                                 c10::IValue()};
  onednn_linear()->callBoxed(&stack);
  return stack[0].toTensor().contiguous();
}

// out = a b^T (first) or out += a b^T; out may be a strided view. at::mm_out and addmm_ write
// into out directly; oneDNN returns a new tensor, which is copied or added.
inline void add_matmul_nt(at::Tensor out, const at::Tensor& a, const at::Tensor& b, bool first) {
  if (!on_onednn(a, b)) {
    if (first) {
      at::mm_out(out, a, b.t());
    } else {
      out.addmm_(a, b.t());
    }
  } else if (first) {
    out.copy_(matmul_nt(a, b));
  } else {
    out.add_(matmul_nt(a, b));
  }
}

}  // namespace cpu
}  // namespace pykernels
