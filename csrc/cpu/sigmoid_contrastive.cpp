// CPU ops of the SigLIP sigmoid contrastive loss.
//
// The [N, M] logits L = logit_scale I T^T + logit_bias are never stored. They are taken in
// blocks of R image rows x C text rows (cpu/block_matmul.h); per block one BLAS product gives
// x = I[rows] T[cols]^T (the accumulation dtype) and the epilogues of
// cpu/sigmoid_contrastive_kernels.h read it:
//   forward:  per row, the sum of softplus(-z L) over the block, added block after block;
//   backward: the block is recomputed and overwritten with G = dLoss/dL, then
//             dI[rows] += G T[cols] and dT[cols] += G^T I[rows] (both without the scale),
//             and after the loop d(logit_scale) = sum_ij G_ij x_ij = sum_i <dI_i, I_i>
//             (an O(N D) dot instead of a third pass over every block), d(logit_bias) =
//             sum_ij G_ij (per row in the epilogue), dI *= scale, dT *= scale.
// With normalize both sides are normalised once (O((N + M) D)) and the gradients go through
// the normalisation's backward. Memory: one block and its products plus O((N + M) D).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>

#include "common/cpu_capability.h"
#include "common/normalize.h"
#include "common/sigmoid_contrastive_args.h"
#include "cpu/block_matmul.h"

#define PK_SIGMOID_NS generic
#include "cpu/sigmoid_contrastive_kernels.h"

namespace pykernels {
namespace cpu {

#ifdef PK_HAVE_AVX2_BUILD
namespace avx2 {  // sigmoid_contrastive_avx2.cpp
template <typename acc>
void loss_block(acc* x, int64_t rows, int64_t C, int64_t r0, int64_t c0,
                const SigmoidBlockArgs<acc>& a, acc* loss);
template <typename acc>
void gradient_block(acc* x, int64_t rows, int64_t C, int64_t r0, int64_t c0,
                    const SigmoidBlockArgs<acc>& a, const acc* grad, acc* dbias_rows);
}  // namespace avx2
#endif

namespace {

constexpr double kNormalizeEps = 1e-12;  // F.normalize's eps; the max(|x|, eps) rule

// The epilogues: the AVX2 + FMA build where the CPU has it, else the baseline build.
template <typename acc>
struct SigmoidEpilogues {
  void (*loss)(acc*, int64_t, int64_t, int64_t, int64_t, const SigmoidBlockArgs<acc>&, acc*);
  void (*gradient)(acc*, int64_t, int64_t, int64_t, int64_t, const SigmoidBlockArgs<acc>&,
                   const acc*, acc*);
};

template <typename acc>
const SigmoidEpilogues<acc>& sigmoid_epilogues() {
#ifdef PK_HAVE_AVX2_BUILD
  if (use_avx2()) {
    static const SigmoidEpilogues<acc> e{&avx2::loss_block<acc>, &avx2::gradient_block<acc>};
    return e;
  }
#endif
  static const SigmoidEpilogues<acc> e{&generic::loss_block<acc>, &generic::gradient_block<acc>};
  return e;
}

// One side's features in the accumulation dtype, contiguous: x as given and n, the rows that
// enter the products (x / max(|x|, eps) with normalize, else x itself).
struct Side {
  at::Tensor x, n;
};

Side prepare(const at::Tensor& features, bool normalize) {
  auto x = features.to(at::toOpMathType(features.scalar_type())).contiguous();
  if (!normalize) return {x, x};
  return {x, x * row_inverse_norms(x, kNormalizeEps).unsqueeze(1)};
}

template <typename acc>
SigmoidBlockArgs<acc> block_args(const at::Tensor& scale, const at::Tensor& bias,
                                 const at::Tensor& image_ids, const at::Tensor& text_ids) {
  constexpr auto type = c10::CppTypeToScalarType<acc>::value;
  return {scale.to(type).template item<acc>(), bias.to(type).template item<acc>(),
          image_ids.const_data_ptr<int64_t>(), text_ids.const_data_ptr<int64_t>()};
}

at::Tensor sigmoid_contrastive_loss_cpu(const at::Tensor& image_features,
                                        const at::Tensor& text_features,
                                        const at::Tensor& logit_scale, const at::Tensor& logit_bias,
                                        const at::Tensor& image_ids_, const at::Tensor& text_ids_,
                                        bool normalize) {
  check_sigmoid_contrastive_loss("pykernels::sigmoid_contrastive_loss", image_features,
                                 text_features, logit_scale, logit_bias, image_ids_, text_ids_,
                                 at::kCPU);
  const auto image_ids = image_ids_.contiguous(), text_ids = text_ids_.contiguous();
  const auto img = prepare(image_features, normalize), txt = prepare(text_features, normalize);
  const int64_t N = img.x.size(0), M = txt.x.size(0);
  auto loss = at::zeros({N}, img.x.options());  // M == 0: no blocks, zero loss
  AT_DISPATCH_FLOATING_TYPES(img.x.scalar_type(), "sigmoid_contrastive_loss_cpu", [&] {
    const auto a = block_args<scalar_t>(logit_scale, logit_bias, image_ids, text_ids);
    for_each_block(N, M, [&](int64_t r0, int64_t rows, int64_t c0, int64_t cols) {
      auto x = matmul_nt(img.n.narrow(0, r0, rows), txt.n.narrow(0, c0, cols));
      sigmoid_epilogues<scalar_t>().loss(x.data_ptr<scalar_t>(), rows, cols, r0, c0, a,
                                         loss.data_ptr<scalar_t>());
    });
  });
  return loss;
}

// The backward's block loop: dI, dT (unscaled, see the header) and the rows' d(logit_bias).
template <typename acc>
void backward_blocks(const Side& img, const Side& txt, const SigmoidBlockArgs<acc>& a,
                     const acc* grad, at::Tensor& dI, at::Tensor& dT, acc* dbias_rows) {
  const int64_t N = img.x.size(0), M = txt.x.size(0);
  for_each_block(N, M, [&](int64_t r0, int64_t rows, int64_t c0, int64_t cols) {
    const auto left = img.n.narrow(0, r0, rows), t = txt.n.narrow(0, c0, cols);
    auto x = matmul_nt(left, t);
    sigmoid_epilogues<acc>().gradient(x.data_ptr<acc>(), rows, cols, r0, c0, a, grad, dbias_rows);
    add_matmul_nt(dI.narrow(0, r0, rows), x, t.t(), c0 == 0);
    // dT[cols]^T += I[rows]^T G: G as the right factor needs no transposed copy of the block
    add_matmul_nt(dT.narrow(0, c0, cols).t(), left.t(), x.t(), r0 == 0);
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sigmoid_contrastive_loss_backward_cpu(
    const at::Tensor& grad_, const at::Tensor& image_features, const at::Tensor& text_features,
    const at::Tensor& logit_scale, const at::Tensor& logit_bias, const at::Tensor& image_ids_,
    const at::Tensor& text_ids_, bool normalize) {
  check_sigmoid_contrastive_loss_backward("pykernels::sigmoid_contrastive_loss_backward", grad_,
                                          image_features, text_features, logit_scale, logit_bias,
                                          image_ids_, text_ids_, at::kCPU);
  const auto image_ids = image_ids_.contiguous(), text_ids = text_ids_.contiguous();
  const auto img = prepare(image_features, normalize), txt = prepare(text_features, normalize);
  const int64_t N = img.x.size(0);
  const auto acc_type = img.x.scalar_type();
  const auto grad = grad_.to(acc_type).contiguous();
  // zeros: an empty side leaves the other side's gradient unwritten by the block loop
  auto dI = at::zeros_like(img.x), dT = at::zeros_like(txt.x);
  auto dbias_rows = at::zeros({N}, img.x.options());
  AT_DISPATCH_FLOATING_TYPES(acc_type, "sigmoid_contrastive_loss_backward_cpu", [&] {
    const auto a = block_args<scalar_t>(logit_scale, logit_bias, image_ids, text_ids);
    backward_blocks<scalar_t>(img, txt, a, grad.const_data_ptr<scalar_t>(), dI, dT,
                              dbias_rows.data_ptr<scalar_t>());
  });
  const auto dscale = (dI * img.n).sum();
  const auto scale = logit_scale.to(acc_type).reshape({});
  dI.mul_(scale);
  dT.mul_(scale);
  if (normalize) {
    normalize_rows_backward_(dI, img.x, kNormalizeEps, /*prescaled=*/false);
    normalize_rows_backward_(dT, txt.x, kNormalizeEps, /*prescaled=*/false);
  }
  return {dI.to(image_features.scalar_type()), dT.to(text_features.scalar_type()),
          dscale.to(logit_scale.scalar_type()).reshape(logit_scale.sizes()),
          dbias_rows.sum().to(logit_bias.scalar_type()).reshape(logit_bias.sizes())};
}

}  // namespace
}  // namespace cpu
}  // namespace pykernels

TORCH_LIBRARY_IMPL(pykernels, CPU, m) {
  using namespace pykernels::cpu;
  m.impl("sigmoid_contrastive_loss", &sigmoid_contrastive_loss_cpu);
  m.impl("sigmoid_contrastive_loss_backward", &sigmoid_contrastive_loss_backward_cpu);
}
