// The epilogues of the fused InfoNCE tiles, compiled once per CPU capability: included by
// contrastive.cpp (baseline flags, namespace `generic`) and by contrastive_avx2.cpp (AVX2 +
// FMA, namespace `avx2`), which define PK_CONTRASTIVE_NS first; contrastive.cpp picks one at
// run time. No include guard: each translation unit includes this once.
//
// A tile holds x[r, j] = <I_hat[r0 + r], T[j]> for a block of image rows against every text
// row, in the accumulation dtype. Its logits are L[r, j] = col_scale[j] x[r, j], where
// col_scale[j] = logit_scale / max(|T_j|, eps) with normalize (the normalised text features
// are never stored) and logit_scale without. Passes:
//   row_stats     per row: m = max_j L, log_sum = log sum_j exp(L - m), pos = L[r, y]
//   column_stats  per column, merged into running stats tile after tile:
//                 m_j = max_i L,  s_j = sum_i exp(L - m_j)
//   gradient      G = a_i exp(L - rl_i) + c_j exp(L - cl_j) - [j = y_i] (a_i + b_i) = dLoss/dL;
//                 the tile becomes G col_scale[j] = dLoss/dx, and dscale_i = sum_j G x col_inv[j]
// Each row and each column chunk is reduced by one thread in a fixed order: deterministic.
#ifndef PK_CONTRASTIVE_NS
#error "define PK_CONTRASTIVE_NS before including cpu/contrastive_kernels.h"
#endif

namespace pykernels {
namespace cpu {

#ifndef PK_CONTRASTIVE_TILE_ARGS
#define PK_CONTRASTIVE_TILE_ARGS
// What forward_tile reads and writes; rows are indexed over the whole batch.
template <typename acc>
struct ForwardArgs {
  const acc* col_scale;              // [M]
  const int64_t* labels;             // [N], in range
  acc *row_max, *row_log_sum, *pos;  // [N]
  acc *col_max, *col_sum;            // [M]; null: no column stats (not symmetric)
};

// What gradient_tile reads and writes.
template <typename acc>
struct GradientArgs {
  const acc *col_scale, *col_inv;  // [M]
  const int64_t* labels;           // [N], in range
  const acc *a, *b;                // [N] weights of each row's two losses; b null: not symmetric
  const acc* c;                    // [M] c_j = sum of b_i over the rows with label j; null: as b
  const acc *row_hi, *row_lo;      // [N] row lse = hi + lo
  const acc *col_hi, *col_lo;      // [M] column lse = hi + lo (unused without c)
  acc* dscale_rows;                // [N] out
};
#endif

namespace PK_CONTRASTIVE_NS {
namespace {

#ifdef CPU_CAPABILITY_AVX2
// at::vec must have been included inside the AVX2 region, not before it.
static_assert(at::vec::Vectorized<float>::size() == 8, "the AVX2 build got baseline at::vec");
#endif

template <typename acc>
using V = at::vec::Vectorized<acc>;

template <typename acc>
inline acc hmax(const V<acc>& v) {
  return at::vec::vec_reduce_all<acc>([](V<acc>& a, V<acc>& b) { return at::vec::maximum(a, b); },
                                      v);
}

template <typename acc>
inline acc hsum(const V<acc>& v) {
  return at::vec::vec_reduce_all<acc>([](V<acc>& a, V<acc>& b) { return a + b; }, v);
}

// exp with NaN passed through. float32: at::vec's exp_u20 (~20 ulp, far inside the float32
// tolerance, ~3x faster than exp()), which clamps its argument and would turn a NaN into a
// finite number.
template <typename acc>
inline V<acc> vexp(const V<acc>& x) {
  if constexpr (std::is_same_v<acc, float>) {
    return V<acc>::blendv(x.exp_u20(), x, x != x);
  } else {
    return x.exp();
  }
}

// n (<= W) elements from p, the rest zero.
template <typename acc>
inline V<acc> load(const acc* p, int64_t n) {
  return n == V<acc>::size() ? V<acc>::loadu(p) : V<acc>::loadu(p, n);
}

// v on the first n lanes, `fill` on the rest (the tail of a row).
template <typename acc>
inline V<acc> keep(const V<acc>& v, int64_t n, acc fill) {
  return n == V<acc>::size() ? v : V<acc>::set(V<acc>(fill), v, n);
}

// f(j, n) over the vectors of a row of M elements (n = valid lanes).
template <typename F>
inline void for_each_vector(int64_t M, int64_t W, F&& f) {
  for (int64_t j = 0; j < M; j += W) f(j, std::min(W, M - j));
}

// Pass row_stats for one row x[0..M): (m, log_sum). log_sum is 0 when m is -inf or NaN
// (no column, all -inf, or a NaN): the loss (m - pos) + log_sum then carries m. A +inf
// logit makes exp(inf - inf) NaN, as in PyTorch's log_softmax.
template <typename acc>
std::pair<acc, acc> row_stats(const acc* x, const acc* col_scale, int64_t M) {
  constexpr int64_t W = V<acc>::size();
  const acc ninf = -std::numeric_limits<acc>::infinity();
  V<acc> vm(ninf);
  for_each_vector(M, W, [&](int64_t j, int64_t n) {
    vm = at::vec::maximum(vm, keep(load(x + j, n) * load(col_scale + j, n), n, ninf));
  });
  const acc m = hmax(vm);
  if (!(m > ninf)) return {m, acc(0)};
  const V<acc> vmax(m);
  V<acc> vs(0);
  for_each_vector(M, W, [&](int64_t j, int64_t n) {
    vs += keep(vexp(load(x + j, n) * load(col_scale + j, n) - vmax), n, acc(0));
  });
  return {m, std::log(hsum(vs))};
}

// Pass column_stats for the columns [j0, j0 + w) of a tile of `rows` rows (row stride M):
// the tile's max and sum of exp per column, merged into the running cm, cs (set by the
// first tile). A column whose max is -inf gets a zero shift: no -inf - -inf.
template <typename acc, int64_t kVecs>
void column_chunk_stats(const acc* x, int64_t rows, int64_t M, int64_t j0, int64_t w,
                        const acc* col_scale, bool first, acc* cm, acc* cs) {
  constexpr int64_t W = V<acc>::size();
  const acc ninf = -std::numeric_limits<acc>::infinity();
  const V<acc> vninf(ninf), zero(0);
  const int64_t nv = (w + W - 1) / W;
  V<acc> sc[kVecs], tm[kVecs], ts[kVecs];
  for (int64_t k = 0; k < nv; ++k) {
    sc[k] = load(col_scale + j0 + k * W, std::min(W, w - k * W));
    tm[k] = vninf;
    ts[k] = zero;
  }
  auto logits = [&](int64_t r, int64_t k) {  // lanes past the chunk: zeros, never stored
    return load(x + r * M + j0 + k * W, std::min(W, w - k * W)) * sc[k];
  };
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < nv; ++k) tm[k] = at::vec::maximum(tm[k], logits(r, k));
  for (int64_t k = 0; k < nv; ++k) tm[k] = V<acc>::blendv(tm[k], zero, tm[k] == vninf);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < nv; ++k) ts[k] += vexp(logits(r, k) - tm[k]);
  for (int64_t k = 0; k < nv; ++k) {
    const int64_t j = j0 + k * W, n = std::min(W, w - k * W);
    if (first) {
      tm[k].store(cm + j, n);
      ts[k].store(cs + j, n);
      continue;
    }
    // merge: m = max(m_old, m_tile), s = s_old exp(m_old - m) + s_tile exp(m_tile - m)
    const V<acc> om = V<acc>::loadu(cm + j, n), os = V<acc>::loadu(cs + j, n);
    const V<acc> nm = at::vec::maximum(om, tm[k]);
    const V<acc> safe = V<acc>::blendv(nm, zero, nm == vninf);
    (os * vexp(om - safe) + ts[k] * vexp(tm[k] - safe)).store(cs + j, n);
    nm.store(cm + j, n);
  }
}

// Pass gradient for one row x[0..M) (overwritten with dLoss/dx): returns the row's
// dscale_i = sum_j G_j x_j col_inv_j. Each lse comes as hi + lo (split_lse):
// L - lse = (L - hi) - lo keeps a float32 lse's digits beyond the float32 rounding of L.
template <typename acc>
acc gradient_row(acc* x, int64_t M, const GradientArgs<acc>& g, int64_t i) {
  constexpr int64_t W = V<acc>::size();
  const V<acc> va(g.a[i]), vhi(g.row_hi[i]), vlo(g.row_lo[i]);
  // the softmax terms a exp(L - rl) + c_j exp(L - cl_j) of the vector at j (n lanes)
  auto softmax_terms = [&](const V<acc>& L, int64_t j, int64_t n) {
    V<acc> d = va * vexp((L - vhi) - vlo);
    if (g.c != nullptr) {
      const V<acc> t = (L - load(g.col_hi + j, n)) - load(g.col_lo + j, n);
      d = at::vec::fmadd(load(g.c + j, n), vexp(t), d);
    }
    return keep(d, n, acc(0));  // lanes past n may be inf (exp(0 - lse)): out of the dot
  };
  const int64_t y = g.labels[i], jy = y / W * W, ny = std::min(W, M - jy);
  const acc x_pos = x[y], w_pos = g.a[i] + (g.b != nullptr ? g.b[i] : acc(0));
  const V<acc> x_y = load(x + jy, ny);  // the vector holding the positive, before it is overwritten
  V<acc> vdot(0);
  for_each_vector(M, W, [&](int64_t j, int64_t n) {
    const V<acc> xj = load(x + j, n), sc = load(g.col_scale + j, n);
    const V<acc> d = softmax_terms(xj * sc, j, n);
    vdot = at::vec::fmadd(d, xj * load(g.col_inv + j, n), vdot);
    (d * sc).store(x + j, n);
  });
  // The positive: G = d - w_pos, subtracted before the scaling. A confident row's G there is
  // a small difference of terms near w_pos; scaled first, it would carry the rounding of
  // d * col_scale (test_confident_rows_gradient_keeps_float32_precision).
  const V<acc> sc_y = load(g.col_scale + jy, ny);
  acc d_y[W];
  softmax_terms(x_y * sc_y, jy, ny).store(d_y);
  d_y[y - jy] -= w_pos;
  (V<acc>::loadu(d_y) * sc_y).store(x + jy, ny);
  return hsum(vdot) - w_pos * x_pos * g.col_inv[y];
}

}  // namespace

// Passes row_stats and column_stats over one tile of `rows` rows (rows r0.. of the logits).
template <typename acc>
void forward_tile(const acc* x, int64_t rows, int64_t M, int64_t r0, const ForwardArgs<acc>& f) {
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const auto [m, log_sum] = row_stats(x + r * M, f.col_scale, M);
      const int64_t i = r0 + r;
      f.row_max[i] = m;
      f.row_log_sum[i] = log_sum;
      f.pos[i] = x[r * M + f.labels[i]] * f.col_scale[f.labels[i]];
    }
  });
  if (f.col_max == nullptr) return;
  // A chunk of columns per task, walked row by row: rows x chunk stays in L2 (256 KB for
  // 256 rows of 256 float32 columns) between the max and the sum.
  constexpr int64_t kVecs = 256 / V<acc>::size();
  constexpr int64_t kChunk = kVecs * V<acc>::size();
  at::parallel_for(0, (M + kChunk - 1) / kChunk, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t j0 = b * kChunk;
      column_chunk_stats<acc, kVecs>(x, rows, M, j0, std::min(kChunk, M - j0), f.col_scale,
                                     r0 == 0, f.col_max, f.col_sum);
    }
  });
}

// Pass gradient over one tile: x becomes dLoss/dx, dscale_rows[r0 + r] each row's share.
template <typename acc>
void gradient_tile(acc* x, int64_t rows, int64_t M, int64_t r0, const GradientArgs<acc>& g) {
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      g.dscale_rows[r0 + r] = gradient_row(x + r * M, M, g, r0 + r);
    }
  });
}

template void forward_tile<float>(const float*, int64_t, int64_t, int64_t, const ForwardArgs<float>&);
template void forward_tile<double>(const double*, int64_t, int64_t, int64_t,
                                   const ForwardArgs<double>&);
template void gradient_tile<float>(float*, int64_t, int64_t, int64_t, const GradientArgs<float>&);
template void gradient_tile<double>(double*, int64_t, int64_t, int64_t, const GradientArgs<double>&);

}  // namespace PK_CONTRASTIVE_NS
}  // namespace cpu
}  // namespace pykernels
