// The epilogues of the SigLIP sigmoid loss's blocks, compiled once per CPU capability: included
// by sigmoid_contrastive.cpp (baseline flags, namespace `generic`) and by
// sigmoid_contrastive_avx2.cpp (AVX2 + FMA, namespace `avx2`), which define PK_SIGMOID_NS first.
// No include guard: each translation unit includes this once.
//
// A block holds x[r, k] = <I[r0 + r], T[c0 + k]> for R image rows and C text rows, in the
// accumulation dtype, contiguous. Per row i and column j: L = scale x + bias, z = +1 where
// image_ids[i] == text_ids[j] (a positive pair), else -1, and t = -z L. Passes per row:
//   signed_logits  x <- t (the vector pass L = scale x + bias, then the positives negated)
//   row_loss       sum_j softplus(t) = sum_j max(t, 0) + log1p(exp(-|t|)): -log sigmoid(z L)
//                  with no overflow for any |L| (softplus, not log(1 + exp(t)))
//   gradient       x <- G = g_i dLoss/dL = g_i (-z) sigmoid(t), returns sum_j G (d logit_bias)
// Each row is reduced by one thread, column blocks in a fixed order: deterministic.
#ifndef PK_SIGMOID_NS
#error "define PK_SIGMOID_NS before including cpu/sigmoid_contrastive_kernels.h"
#endif

namespace pykernels {
namespace cpu {

#ifndef PK_SIGMOID_BLOCK_ARGS
#define PK_SIGMOID_BLOCK_ARGS
// What both epilogues read, indexed over the whole batch ([N] rows, [M] columns).
template <typename acc>
struct SigmoidBlockArgs {
  acc scale, bias;
  const int64_t *image_ids, *text_ids;  // [N], [M]: equal ids mark the positive pairs
};
#endif

namespace PK_SIGMOID_NS {
namespace {

template <typename acc>
using V = at::vec::Vectorized<acc>;

// f(k, n) over the vectors of a row of C elements (n = valid lanes).
template <typename acc, typename F>
inline void for_each_vector(int64_t C, F&& f) {
  constexpr int64_t W = V<acc>::size();
  for (int64_t k = 0; k < C; k += W) f(k, std::min(W, C - k));
}

// x[k] = -x[k] where text_ids[k] == id: turns -z L into L and back (a plain loop over ids,
// which the compiler vectorises; rows have few positives).
template <typename acc>
inline void negate_positives(acc* x, int64_t C, const int64_t* text_ids, int64_t id) {
  for (int64_t k = 0; k < C; ++k) x[k] = text_ids[k] == id ? -x[k] : x[k];
}

// Pass signed_logits on one block row x[0..C) (columns c0..) of image row i.
template <typename acc>
inline void signed_logits(acc* x, int64_t C, int64_t c0, int64_t i,
                          const SigmoidBlockArgs<acc>& a) {
  const V<acc> s(a.scale), b(a.bias);
  for_each_vector<acc>(
      C, [&](int64_t k, int64_t n) { (V<acc>::loadu(x + k, n) * s + b).store(x + k, n); });
  negate_positives(x, C, a.text_ids + c0, a.image_ids[i]);
}

// Pass row_loss: sum of softplus(t) over the row.
template <typename acc>
inline acc row_loss(const acc* t, int64_t C) {
  const V<acc> zero(0);
  V<acc> sum(0);
  for_each_vector<acc>(C, [&](int64_t k, int64_t n) {
    const V<acc> v = V<acc>::loadu(t + k, n);
    const V<acc> sp = at::vec::maximum(v, zero) + ((zero - v.abs()).exp()).log1p();
    sum += n == V<acc>::size() ? sp : V<acc>::set(zero, sp, n);
  });
  return at::vec::vec_reduce_all<acc>([](V<acc>& p, V<acc>& q) { return p + q; }, sum);
}

// Pass gradient: t -> G = g (-z) sigmoid(t) on the row; returns sum_j G.
template <typename acc>
inline acc row_gradient(acc* x, int64_t C, int64_t c0, int64_t i, acc g,
                        const SigmoidBlockArgs<acc>& a) {
  const V<acc> zero(0), one(1), vg(g);
  V<acc> sum(0);
  for_each_vector<acc>(C, [&](int64_t k, int64_t n) {
    const V<acc> d = vg / (one + (zero - V<acc>::loadu(x + k, n)).exp());  // g sigmoid(t)
    d.store(x + k, n);
    sum += n == V<acc>::size() ? d : V<acc>::set(zero, d, n);
  });
  acc total = at::vec::vec_reduce_all<acc>([](V<acc>& p, V<acc>& q) { return p + q; }, sum);
  const int64_t* ids = a.text_ids + c0;
  for (int64_t k = 0; k < C; ++k) {  // the positives: -z = -1
    if (ids[k] == a.image_ids[i]) {
      total -= 2 * x[k];
      x[k] = -x[k];
    }
  }
  return total;
}

}  // namespace

// Passes signed_logits and row_loss over the block of `rows` x C at (r0, c0): each row's loss
// is written (c0 == 0) or added to loss[r0 + r].
template <typename acc>
void loss_block(acc* x, int64_t rows, int64_t C, int64_t r0, int64_t c0,
                const SigmoidBlockArgs<acc>& a, acc* loss) {
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(C, 1));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      acc* row = x + r * C;
      signed_logits(row, C, c0, r0 + r, a);
      const acc part = row_loss(row, C);
      loss[r0 + r] = c0 == 0 ? part : loss[r0 + r] + part;
    }
  });
}

// Passes signed_logits and gradient over the block at (r0, c0): x becomes G = dLoss/dL (rows
// weighted by grad), and each row's sum of G is written (c0 == 0) or added to dbias_rows.
template <typename acc>
void gradient_block(acc* x, int64_t rows, int64_t C, int64_t r0, int64_t c0,
                    const SigmoidBlockArgs<acc>& a, const acc* grad, acc* dbias_rows) {
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(C, 1));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      acc* row = x + r * C;
      signed_logits(row, C, c0, r0 + r, a);
      const acc part = row_gradient(row, C, c0, r0 + r, grad[r0 + r], a);
      dbias_rows[r0 + r] = c0 == 0 ? part : dbias_rows[r0 + r] + part;
    }
  });
}

template void loss_block<float>(float*, int64_t, int64_t, int64_t, int64_t,
                                const SigmoidBlockArgs<float>&, float*);
template void loss_block<double>(double*, int64_t, int64_t, int64_t, int64_t,
                                 const SigmoidBlockArgs<double>&, double*);
template void gradient_block<float>(float*, int64_t, int64_t, int64_t, int64_t,
                                    const SigmoidBlockArgs<float>&, const float*, float*);
template void gradient_block<double>(double*, int64_t, int64_t, int64_t, int64_t,
                                     const SigmoidBlockArgs<double>&, const double*, double*);

}  // namespace PK_SIGMOID_NS
}  // namespace cpu
}  // namespace pykernels
