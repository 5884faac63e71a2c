// CPU kernels of the contrastive family: the fused InfoNCE / CLIP loss.
//
// The [N, M] logit matrix L = scale * I T^T is never stored. Rows are processed in
// tiles of R rows: one BLAS matmul (at::mm) fills an R x M buffer in the accumulation
// dtype, and at::vec epilogues read it:
//   forward:  row log-sum-exp (image -> text) and, per column, a running (max, sum of
//             exp) merged tile after tile (text -> image); the positive logit of row i
//             is the tile's element (i, labels[i]);
//   backward: the tile is recomputed and overwritten with dLoss/dL (softmax minus
//             one-hot, weighted by the upstream gradient), then dI = scale dL T and
//             dT += scale dL^T I, and d(scale) = sum dL * (I T^T).
// Memory: one tile (contrastive_tile_rows) plus O((N + M) D). Tiles run in a fixed
// order and every sum has a fixed order: results do not depend on the thread count
// beyond what the BLAS library does (deterministic for fixed shapes and threads).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>

#include "common/contrastive_args.h"
#include "common/cpu_vec.h"
#include "common/normalize.h"

namespace pykernels {
namespace cpu {
namespace {

constexpr double kNormalizeEps = 1e-12;  // F.normalize's eps; the max(|x|, eps) rule

template <typename acc>
using V = at::vec::Vectorized<acc>;

template <typename acc>
inline acc hmax(const V<acc>& v) {
  return at::vec::vec_reduce_all<acc>([](V<acc>& a, V<acc>& b) { return at::vec::maximum(a, b); }, v);
}

template <typename acc>
inline acc hsum(const V<acc>& v) {
  return at::vec::vec_reduce_all<acc>([](V<acc>& a, V<acc>& b) { return a + b; }, v);
}

// log sum_j exp(scale * s[j]) over one row of n raw dot products.
// A row's log-sum-exp as max + log(sum): the loss is formed as (max - positive) + log(sum),
// which keeps the float32 precision of a small loss under large logits (lse - positive
// would lose |lse| * eps); log_sum is 0 when max is not finite (lse = max then).
template <typename acc>
struct Lse {
  acc max, log_sum;
  double value() const { return double(max) + double(log_sum); }  // float64: see split_lse
};

template <typename acc>
Lse<acc> row_logsumexp(const acc* s, int64_t n, acc scale) {
  constexpr int64_t W = V<acc>::size();
  const V<acc> vs(scale);
  V<acc> vm(-std::numeric_limits<acc>::infinity());
  int64_t j = 0;
  for (; j + W <= n; j += W) vm = at::vec::maximum(vm, V<acc>::loadu(s + j) * vs);
  acc m = hmax(vm);
  for (; j < n; ++j) m = std::isnan(scale * s[j]) ? scale * s[j] : std::max(m, scale * s[j]);
  if (!(m > -std::numeric_limits<acc>::infinity())) return {m, acc(0)};  // empty row, all -inf, or NaN
  const V<acc> vmax(m);
  V<acc> vsum(0);
  for (j = 0; j + W <= n; j += W) vsum += (V<acc>::loadu(s + j) * vs - vmax).exp();
  acc sum = hsum(vsum);
  for (; j < n; ++j) sum += std::exp(scale * s[j] - m);
  return {m, std::log(sum)};
}

// Column statistics of one tile (rows x n, row stride n) merged into the running
// per-column max cm and sum of exp(L - cm) cs. `first`: cm/cs are not set yet. Each
// task owns a chunk of columns and walks the tile row by row (contiguous reads).
template <typename acc>
void merge_column_stats(const acc* s, int64_t rows, int64_t n, acc scale, bool first, acc* cm,
                        acc* cs) {
  constexpr int64_t W = V<acc>::size(), kChunk = 64 * W;
  const acc ninf = -std::numeric_limits<acc>::infinity();
  const V<acc> vs(scale), vninf(ninf), zero(0);
  at::parallel_for(0, (n + kChunk - 1) / kChunk, 1, [&](int64_t b0, int64_t b1) {
    V<acc> tm[kChunk / W], ts[kChunk / W];
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t j0 = b * kChunk, w = std::min(kChunk, n - j0), nv = (w + W - 1) / W;
      auto load = [&](int64_t r, int64_t k) {  // lanes past the chunk load zeros (dropped)
        const int64_t j = j0 + k * W;
        return V<acc>::loadu(s + r * n + j, std::min(W, n - j)) * vs;
      };
      for (int64_t k = 0; k < nv; ++k) tm[k] = vninf;
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t k = 0; k < nv; ++k) tm[k] = at::vec::maximum(tm[k], load(r, k));
      // Columns whose tile max is -inf (only -inf logits) get a zero shift: no -inf + inf.
      for (int64_t k = 0; k < nv; ++k) {
        tm[k] = V<acc>::blendv(tm[k], zero, tm[k] == vninf);
        ts[k] = zero;
      }
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t k = 0; k < nv; ++k) ts[k] += (load(r, k) - tm[k]).exp();
      for (int64_t k = 0; k < nv; ++k) {
        const int64_t j = j0 + k * W, wk = std::min(W, n - j);
        if (first) {
          tm[k].store(cm + j, wk);
          ts[k].store(cs + j, wk);
          continue;
        }
        const V<acc> om = V<acc>::loadu(cm + j, wk), os = V<acc>::loadu(cs + j, wk);
        const V<acc> nm = at::vec::maximum(om, tm[k]);
        const V<acc> safe = V<acc>::blendv(nm, zero, nm == vninf);
        (os * (om - safe).exp() + ts[k] * (tm[k] - safe).exp()).store(cs + j, wk);
        nm.store(cm + j, wk);
      }
    }
  });
}

// Features in the accumulation dtype, contiguous, normalised when asked.
at::Tensor prepare(const at::Tensor& x, bool normalize) {
  auto a = x.to(at::toOpMathType(x.scalar_type())).contiguous();
  return normalize ? normalize_rows(a, kNormalizeEps) : a;
}

void check_labels_in_range(const char* op, const at::Tensor& labels, int64_t M) {
  const int64_t* y = labels.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < labels.numel(); ++i) {
    TORCH_CHECK_INDEX(y[i] >= 0 && y[i] < M, op, ": argument 'labels' must hold indices in [0, ", M,
                      ") of text_features rows, got labels[", i, "] = ", y[i]);
  }
}

template <typename acc>
void info_nce_forward_impl(const at::Tensor& I, const at::Tensor& T, acc scale, const int64_t* y,
                           bool symmetric, acc* loss, double* row_lse, double* col_lse) {
  const int64_t N = I.size(0), M = T.size(0), R = contrastive_tile_rows(N, M);
  std::vector<acc> pos(N), cm(symmetric ? M : 0), cs(symmetric ? M : 0);
  auto tile = at::empty({R, M}, I.options());
  for (int64_t r0 = 0; r0 < N; r0 += R) {
    const int64_t rows = std::min(R, N - r0);
    auto S = tile.narrow(0, 0, rows);
    at::mm_out(S, I.narrow(0, r0, rows), T.t());
    const acc* s = S.const_data_ptr<acc>();
    at::parallel_for(0, rows, 1, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const int64_t i = r0 + r;
        const Lse<acc> lse = row_logsumexp(s + r * M, M, scale);
        pos[i] = scale * s[r * M + y[i]];
        row_lse[i] = lse.value();
        loss[i] = (lse.max - pos[i]) + lse.log_sum;
      }
    });
    if (symmetric) merge_column_stats(s, rows, M, scale, r0 == 0, cm.data(), cs.data());
  }
  if (!symmetric) return;
  for (int64_t j = 0; j < M; ++j)
    col_lse[j] = N == 0 ? -std::numeric_limits<double>::infinity() : double(cm[j]) + double(std::log(cs[j]));
  for (int64_t i = 0; i < N; ++i) loss[N + i] = (cm[y[i]] - pos[i]) + std::log(cs[y[i]]);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> info_nce_loss_cpu(
    const at::Tensor& img, const at::Tensor& txt, const at::Tensor& logit_scale,
    const at::Tensor& labels_, bool symmetric, bool normalize) {
  const char* op = "pykernels::info_nce_loss";
  check_info_nce(op, img, txt, logit_scale, labels_, at::kCPU);
  const auto labels = labels_.contiguous();
  const int64_t N = img.size(0), M = txt.size(0);
  check_labels_in_range(op, labels, M);
  const auto acc_type = at::toOpMathType(img.scalar_type());
  const auto opts = img.options().dtype(acc_type);
  auto loss = at::empty({symmetric ? 2 : 1, N}, opts);
  auto row_lse = at::empty({N}, opts.dtype(at::kDouble)), col_lse = at::empty({symmetric ? M : 0}, opts.dtype(at::kDouble));
  const auto I = prepare(img, normalize), T = prepare(txt, normalize);
  AT_DISPATCH_FLOATING_TYPES(acc_type, "info_nce_loss_cpu", [&] {
    info_nce_forward_impl<scalar_t>(I, T, logit_scale.item().to<scalar_t>(), labels.const_data_ptr<int64_t>(),
                                    symmetric, loss.data_ptr<scalar_t>(), row_lse.data_ptr<double>(),
                                    col_lse.data_ptr<double>());
  });
  return {loss, row_lse, col_lse};
}

// Overwrites one row s[0..M) of raw dot products with dLoss/dL and returns
// sum_j dLoss/dL_j * s_j (this row's share of d(scale)):
//   dL_j = a exp(L_j - rl) + c_j exp(L_j - cl_j) - [j == y] (a + b),   L_j = scale s_j,
// with each lse given as hi + lo (split_lse).
template <typename acc>
acc grad_row(acc* s, int64_t M, acc scale, acc a, acc b, acc rl_hi, acc rl_lo, const acc* c, const acc* cl_hi,
             const acc* cl_lo, int64_t y) {
  constexpr int64_t W = V<acc>::size();
  const V<acc> vs(scale), va(a), vhi(rl_hi), vlo(rl_lo);
  V<acc> vdot(0);
  const acc s_pos = s[y];
  for (int64_t j = 0; j < M; j += W) {
    const int64_t w = std::min(W, M - j);
    const V<acc> x = V<acc>::loadu(s + j, w), L = x * vs;
    V<acc> d = va * ((L - vhi) - vlo).exp();
    if (c != nullptr) {
      const V<acc> x = (L - V<acc>::loadu(cl_hi + j, w)) - V<acc>::loadu(cl_lo + j, w);
      d = at::vec::fmadd(V<acc>::loadu(c + j, w), x.exp(), d);
    }
    // Lanes past w load zeros and their d is dropped by the partial store; zero them
    // out of the dot product too.
    vdot = at::vec::fmadd(w == W ? d : V<acc>::set(V<acc>(0), d, w), x, vdot);
    d.store(s + j, w);
  }
  s[y] -= a + b;
  return hsum(vdot) - (a + b) * s_pos;
}

template <typename acc>
acc info_nce_backward_impl(const at::Tensor& I, const at::Tensor& T, acc scale, const int64_t* y,
                           const acc* ga, const acc* gb, const acc* row_hi, const acc* row_lo,
                           const acc* col_hi, const acc* col_lo, at::Tensor& dI, at::Tensor& dT) {
  const int64_t N = I.size(0), M = T.size(0), R = contrastive_tile_rows(N, M);
  const bool symmetric = gb != nullptr;
  // Column weights c_j = sum of the text -> image gradients of the pairs whose label is j,
  // summed in row order (deterministic).
  std::vector<acc> c(symmetric ? M : 0, acc(0)), dscale_rows(N);
  for (int64_t i = 0; symmetric && i < N; ++i) c[y[i]] += gb[i];
  auto tile = at::empty({R, M}, I.options());
  if (N == 0) dT.zero_();
  for (int64_t r0 = 0; r0 < N; r0 += R) {
    const int64_t rows = std::min(R, N - r0);
    auto S = tile.narrow(0, 0, rows);
    const auto Ir = I.narrow(0, r0, rows);
    at::mm_out(S, Ir, T.t());
    acc* s = S.data_ptr<acc>();
    at::parallel_for(0, rows, 1, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const int64_t i = r0 + r;
        dscale_rows[i] = grad_row<acc>(s + r * M, M, scale, ga[i], symmetric ? gb[i] : acc(0), row_hi[i],
                                       row_lo[i], symmetric ? c.data() : nullptr, col_hi, col_lo, y[i]);
      }
    });
    auto dIr = dI.narrow(0, r0, rows);
    at::mm_out(dIr, S, T);
    if (r0 == 0) {
      at::mm_out(dT, S.t(), Ir);
    } else {
      dT.addmm_(S.t(), Ir);
    }
  }
  dI.mul_(scale);
  dT.mul_(scale);
  acc dscale = 0;
  for (int64_t i = 0; i < N; ++i) dscale += dscale_rows[i];
  return dscale;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> info_nce_loss_backward_cpu(
    const at::Tensor& grad_, const at::Tensor& img, const at::Tensor& txt, const at::Tensor& logit_scale,
    const at::Tensor& labels_, const at::Tensor& row_lse_, const at::Tensor& col_lse_, bool symmetric,
    bool normalize) {
  const char* op = "pykernels::info_nce_loss_backward";
  check_info_nce(op, img, txt, logit_scale, labels_, at::kCPU);
  check_info_nce_backward(op, grad_, img, txt, row_lse_, col_lse_, symmetric);
  const auto labels = labels_.contiguous();
  const int64_t N = img.size(0), M = txt.size(0);
  check_labels_in_range(op, labels, M);
  const auto acc_type = at::toOpMathType(img.scalar_type());
  const auto grad = grad_.to(acc_type).contiguous();
  // (no structured bindings: C++17 lambdas below cannot capture them)
  const auto row_split = split_lse(row_lse_, acc_type), col_split = split_lse(col_lse_, acc_type);
  const at::Tensor &row_hi = row_split.first, &row_lo = row_split.second;
  const at::Tensor &col_hi = col_split.first, &col_lo = col_split.second;
  const auto I0 = prepare(img, false), T0 = prepare(txt, false);
  const auto I = normalize ? normalize_rows(I0, kNormalizeEps) : I0;
  const auto T = normalize ? normalize_rows(T0, kNormalizeEps) : T0;
  auto dI = at::empty_like(I), dT = at::empty_like(T);
  auto dscale = at::empty_like(logit_scale);
  AT_DISPATCH_FLOATING_TYPES(acc_type, "info_nce_loss_backward_cpu", [&] {
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    const scalar_t v = info_nce_backward_impl<scalar_t>(
        I, T, logit_scale.item().to<scalar_t>(), labels.const_data_ptr<int64_t>(), g,
        symmetric ? g + N : nullptr, row_hi.const_data_ptr<scalar_t>(), row_lo.const_data_ptr<scalar_t>(),
        symmetric ? col_hi.const_data_ptr<scalar_t>() : nullptr,
        symmetric ? col_lo.const_data_ptr<scalar_t>() : nullptr, dI, dT);
    dscale.fill_(v);
  });
  if (normalize) {
    dI = normalize_rows_backward(dI, I0, kNormalizeEps);
    dT = normalize_rows_backward(dT, T0, kNormalizeEps);
  }
  (void)M;
  return {dI.to(img.scalar_type()), dT.to(txt.scalar_type()), dscale};
}

}  // namespace
}  // namespace cpu
}  // namespace pykernels

TORCH_LIBRARY_IMPL(pykernels, CPU, m) {
  using namespace pykernels::cpu;
  m.impl("info_nce_loss", &info_nce_loss_cpu);
  m.impl("info_nce_loss_backward", &info_nce_loss_backward_cpu);
}
