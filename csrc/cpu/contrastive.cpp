// CPU ops of the contrastive family: the fused InfoNCE / CLIP loss.
//
// The [N, M] logit matrix L = logit_scale I_hat T_hat^T is never stored. It is taken in blocks
// of R image rows x C text rows; per block, one BLAS product gives x = I_hat[rows] T[cols]^T
// (the accumulation dtype) and the epilogues of cpu/contrastive_kernels.h read it:
//   forward:  per row and per column a running (max, sum of exp), merged block after block
//             (image -> text and text -> image log-sum-exps), and the positive logits;
//   backward: the block is recomputed (bit for bit: the same products on the same blocks)
//             and overwritten with dLoss/dx, then dI_hat[rows] += dx T[cols] and
//             dT[cols] += dx^T I_hat[rows].
// With normalize, the image rows are normalised block by block and the text side's 1 / |T_j|
// is folded into the logits (col_scale), so no normalised copy of either side is stored and
// the text gradient comes out already divided by |T_j| (normalize_rows_backward_'s prescaled).
// Memory: one block and its two products (blocking()) plus O((N + M) D). Blocks and sums run
// in a fixed order: results do not depend on the thread count beyond what the BLAS library
// does. The epilogues are built twice (baseline and AVX2 + FMA, contrastive_avx2.cpp);
// epilogues() picks one at run time.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

#include "common/contrastive_args.h"
#include "common/output_memory.h"
#include "common/cpu_capability.h"
#include "common/cpu_vec.h"
#include "common/normalize.h"
#include "cpu/block_matmul.h"

#define PK_CONTRASTIVE_NS generic
#include "cpu/contrastive_kernels.h"

namespace pykernels {
namespace cpu {

#ifdef PK_HAVE_AVX2_BUILD
namespace avx2 {  // contrastive_avx2.cpp
template <typename acc>
void forward_block(const acc* x, int64_t rows, int64_t C, int64_t r0, int64_t c0,
                   const ForwardArgs<acc>& f);
template <typename acc>
void gradient_block(acc* x, int64_t rows, int64_t C, int64_t r0, int64_t c0,
                    const GradientArgs<acc>& g);
}  // namespace avx2
#endif

namespace {

constexpr double kNormalizeEps = 1e-12;  // F.normalize's eps; the max(|x|, eps) rule

// The epilogues: the AVX2 + FMA build where the CPU has it, else the baseline build.
template <typename acc>
struct Epilogues {
  void (*forward)(const acc*, int64_t, int64_t, int64_t, int64_t, const ForwardArgs<acc>&);
  void (*gradient)(acc*, int64_t, int64_t, int64_t, int64_t, const GradientArgs<acc>&);
};

template <typename acc>
const Epilogues<acc>& epilogues() {
#ifdef PK_HAVE_AVX2_BUILD
  if (use_avx2()) {
    static const Epilogues<acc> e{&avx2::forward_block<acc>, &avx2::gradient_block<acc>};
    return e;
  }
#endif
  static const Epilogues<acc> e{&generic::forward_block<acc>, &generic::gradient_block<acc>};
  return e;
}

// The features of one side in the accumulation dtype, contiguous, with 1 / max(|row|, eps)
// per row (normalize) or ones, and the logit scale per column: scale * inv.
struct Side {
  at::Tensor x, inv;
};

Side prepare(const at::Tensor& features, bool normalize) {
  auto x = features.to(at::toOpMathType(features.scalar_type())).contiguous();
  auto inv = normalize ? row_inverse_norms(x, kNormalizeEps) : at::ones({x.size(0)}, x.options());
  return {x, inv};
}

// The image rows [r0, r0 + rows), normalised when asked: the left factor of a block.
at::Tensor image_rows(const Side& img, int64_t r0, int64_t rows, bool normalize) {
  const auto rows_x = img.x.narrow(0, r0, rows);
  return normalize ? rows_x * img.inv.narrow(0, r0, rows).unsqueeze(1) : rows_x;
}

void check_labels_in_range(const char* op, const at::Tensor& labels, int64_t M) {
  const int64_t* y = labels.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < labels.numel(); ++i) {
    TORCH_CHECK_INDEX(y[i] >= 0 && y[i] < M, op, ": argument 'labels' must hold indices in [0, ", M,
                      ") of text_features rows, got labels[", i, "] = ", y[i]);
  }
}

// Losses from the stats: l_i2t = (m_i - pos_i) + log s_i (not lse - pos, which would lose
// |lse| eps of a small loss); l_t2i = (cm_y - pos_i) + log cs_y at y = labels[i]. The
// log-sum-exps are returned in float64 as m + log s (see split_lse).
template <typename acc>
void write_losses(const ForwardArgs<acc>& f, int64_t N, int64_t M, acc* loss, double* row_lse,
                  double* col_lse) {
  for (int64_t i = 0; i < N; ++i) {
    const acc log_sum = std::log(f.row_sum[i]);
    loss[i] = (f.row_max[i] - f.pos[i]) + log_sum;
    row_lse[i] = double(f.row_max[i]) + double(log_sum);
  }
  if (f.col_max == nullptr) return;
  for (int64_t j = 0; j < M; ++j) {
    col_lse[j] = double(f.col_max[j]) + double(std::log(f.col_sum[j]));
  }
  for (int64_t i = 0; i < N; ++i) {
    const int64_t y = f.labels[i];
    loss[N + i] = (f.col_max[y] - f.pos[i]) + std::log(f.col_sum[y]);
  }
}

template <typename acc>
void forward_impl(const Side& img, const Side& txt, const at::Tensor& col_scale,
                  const int64_t* labels, bool symmetric, bool normalize, acc* loss, double* row_lse,
                  double* col_lse) {
  const int64_t N = img.x.size(0), M = txt.x.size(0);
  const acc ninf = -std::numeric_limits<acc>::infinity();
  // running stats start empty (max -inf, sum 0): what a row or column without logits keeps
  std::vector<acc> row_max(N, ninf), row_sum(N, 0), pos(N), cm(symmetric ? M : 0, ninf),
      cs(symmetric ? M : 0, 0);
  const ForwardArgs<acc> f{col_scale.const_data_ptr<acc>(),
                           labels,
                           row_max.data(),
                           row_sum.data(),
                           pos.data(),
                           symmetric ? cm.data() : nullptr,
                           symmetric ? cs.data() : nullptr};
  at::Tensor left;
  for_each_block(N, M, [&](int64_t r0, int64_t rows, int64_t c0, int64_t cols) {
    if (c0 == 0) left = image_rows(img, r0, rows, normalize);
    const auto x = matmul_nt(left, txt.x.narrow(0, c0, cols));
    epilogues<acc>().forward(x.const_data_ptr<acc>(), rows, cols, r0, c0, f);
  });
  write_losses(f, N, M, loss, row_lse, col_lse);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> info_nce_loss_cpu(const at::Tensor& image_features,
                                                                 const at::Tensor& text_features,
                                                                 const at::Tensor& logit_scale,
                                                                 const at::Tensor& labels_,
                                                                 bool symmetric, bool normalize) {
  const char* op = "pykernels::info_nce_loss";
  check_info_nce_loss(op, image_features, text_features, logit_scale, labels_, at::kCPU);
  const auto labels = labels_.contiguous();
  const int64_t N = image_features.size(0), M = text_features.size(0);
  check_labels_in_range(op, labels, M);
  const auto img = prepare(image_features, normalize), txt = prepare(text_features, normalize);
  const auto col_scale = txt.inv * logit_scale.to(txt.x.scalar_type()).reshape({});
  auto loss = at::empty({symmetric ? 2 : 1, N}, img.x.options());
  const auto lse_opts = img.x.options().dtype(at::kDouble);
  auto row_lse = at::empty({N}, lse_opts), col_lse = at::empty({symmetric ? M : 0}, lse_opts);
  AT_DISPATCH_FLOATING_TYPES(img.x.scalar_type(), "info_nce_loss_cpu", [&] {
    forward_impl<scalar_t>(img, txt, col_scale, labels.const_data_ptr<int64_t>(), symmetric,
                           normalize, loss.data_ptr<scalar_t>(), row_lse.data_ptr<double>(),
                           col_lse.data_ptr<double>());
  });
  return {loss, row_lse, col_lse};
}

// The backward's block loop: per block, recompute x, turn it into dLoss/dx (gradient_block),
// then dI_hat[rows] += dx T[cols] and dT[cols] += dx^T I_hat[rows] (with normalize: dLoss/dT_hat
// / |T_j|, since dx carries col_scale). Returns d(logit_scale), summed in row order.
template <typename acc>
acc backward_impl(const Side& img, const Side& txt, const GradientArgs<acc>& g, bool normalize,
                  at::Tensor& dI, at::Tensor& dT) {
  const int64_t N = img.x.size(0), M = txt.x.size(0);
  if (N == 0) dT.zero_();
  if (M == 0) dI.zero_();
  at::Tensor left;
  for_each_block(N, M, [&](int64_t r0, int64_t rows, int64_t c0, int64_t cols) {
    if (c0 == 0) left = image_rows(img, r0, rows, normalize);
    const auto t = txt.x.narrow(0, c0, cols);
    auto x = matmul_nt(left, t);  // bit for bit the forward's block
    epilogues<acc>().gradient(x.data_ptr<acc>(), rows, cols, r0, c0, g);
    add_matmul_nt(dI.narrow(0, r0, rows), x, t.t(), c0 == 0);
    // dT[cols]^T += I_hat[rows]^T dx: the product with dx as the right factor needs no
    // transposed copy of the block (dx^T as a left factor did: 8 MB more at the peak)
    add_matmul_nt(dT.narrow(0, c0, cols).t(), left.t(), x.t(), r0 == 0);
  });
  acc dscale = 0;
  for (int64_t i = 0; i < N; ++i) dscale += g.dscale_rows[i];
  return dscale;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> info_nce_loss_backward_cpu(
    const at::Tensor& grad_, const at::Tensor& image_features, const at::Tensor& text_features,
    const at::Tensor& logit_scale, const at::Tensor& labels_, const at::Tensor& row_lse,
    const at::Tensor& col_lse, bool symmetric, bool normalize) {
  const char* op = "pykernels::info_nce_loss_backward";
  check_info_nce_loss_backward(op, grad_, image_features, text_features, logit_scale, labels_,
                               row_lse, col_lse, symmetric, at::kCPU);
  const auto labels = labels_.contiguous();
  const int64_t N = image_features.size(0), M = text_features.size(0);
  check_labels_in_range(op, labels, M);
  const auto img = prepare(image_features, normalize), txt = prepare(text_features, normalize);
  const auto acc_type = img.x.scalar_type();
  const auto scale = logit_scale.to(acc_type).reshape({});
  const auto col_scale = txt.inv * scale;
  const auto grad = grad_.to(acc_type).contiguous();
  const auto row_split = split_lse(row_lse, acc_type), col_split = split_lse(col_lse, acc_type);
  auto dI = empty_output_like(img.x), dT = empty_output_like(txt.x);
  auto dscale_rows = at::empty({N}, img.x.options());
  at::Tensor dscale;
  AT_DISPATCH_FLOATING_TYPES(acc_type, "info_nce_loss_backward_cpu", [&] {
    using acc = scalar_t;
    const acc* ga = grad.const_data_ptr<acc>();
    const int64_t* y = labels.const_data_ptr<int64_t>();
    // c_j = the sum of the text -> image weights b_i of the rows whose label is j, in row order
    std::vector<acc> c(symmetric ? M : 0, acc(0));
    for (int64_t i = 0; symmetric && i < N; ++i) c[y[i]] += ga[N + i];
    const GradientArgs<acc> g{col_scale.const_data_ptr<acc>(),
                              txt.inv.const_data_ptr<acc>(),
                              y,
                              ga,
                              symmetric ? ga + N : nullptr,
                              symmetric ? c.data() : nullptr,
                              row_split.first.const_data_ptr<acc>(),
                              row_split.second.const_data_ptr<acc>(),
                              col_split.first.const_data_ptr<acc>(),
                              col_split.second.const_data_ptr<acc>(),
                              dscale_rows.data_ptr<acc>()};
    dscale = at::full_like(logit_scale, backward_impl<acc>(img, txt, g, normalize, dI, dT));
  });
  if (normalize) {
    normalize_rows_backward_(dI, img.x, kNormalizeEps, /*prescaled=*/false);
    normalize_rows_backward_(dT, txt.x, kNormalizeEps, /*prescaled=*/true);
  }
  return {dI.to(image_features.scalar_type()), dT.to(text_features.scalar_type()), dscale};
}

}  // namespace
}  // namespace cpu
}  // namespace pykernels

TORCH_LIBRARY_IMPL(pykernels, CPU, m) {
  using namespace pykernels::cpu;
  m.impl("info_nce_loss", &info_nce_loss_cpu);
  m.impl("info_nce_loss_backward", &info_nce_loss_backward_cpu);
}
