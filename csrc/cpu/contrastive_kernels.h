// The epilogues of the fused InfoNCE tiles, compiled once per CPU capability: included by
// contrastive.cpp (baseline flags, namespace `generic`) and by contrastive_avx2.cpp (AVX2 +
// FMA, namespace `avx2`), which define PK_CONTRASTIVE_NS first; contrastive.cpp picks one at
// run time. No include guard: each translation unit includes this once.
//
// A block holds x[r, k] = <I_hat[r0 + r], T[c0 + k]> for R image rows and C text rows, in the
// accumulation dtype, contiguous. Its logits are L = col_scale[j] x (j = c0 + k), where
// col_scale[j] = logit_scale / max(|T_j|, eps) with normalize (the normalised text features
// are never stored) and logit_scale without. Passes:
//   row_stats     per row: m = max_k L, s = sum_k exp(L - m), merged into the row's running
//                 (m, s) block after block; pos = L[r, y] from the block holding y
//   column_stats  per column, merged the same way over the row blocks
//   gradient      G = a_i exp(L - rl_i) + c_j exp(L - cl_j) - [j = y_i] (a_i + b_i) = dLoss/dL;
//                 the block becomes G col_scale[j] = dLoss/dx, and dscale_i += sum_j G x col_inv[j]
// Running stats merge as m' = max(m, m_b), s' = s exp(m - m') + s_b exp(m_b - m'). Each row
// and each column chunk is reduced by one thread, blocks in a fixed order: deterministic.
#ifndef PK_CONTRASTIVE_NS
#error "define PK_CONTRASTIVE_NS before including cpu/contrastive_kernels.h"
#endif

namespace pykernels {
namespace cpu {

#ifndef PK_CONTRASTIVE_TILE_ARGS
#define PK_CONTRASTIVE_TILE_ARGS
// What forward_block reads and writes, indexed over the whole batch ([N] rows, [M] columns).
template <typename acc>
struct ForwardArgs {
  const acc* col_scale;          // [M]
  const int64_t* labels;         // [N], in range
  acc *row_max, *row_sum, *pos;  // [N] running stats (set by the first column block)
  acc *col_max, *col_sum;        // [M] running stats; null: none (not symmetric)
};

// What gradient_block reads and writes.
template <typename acc>
struct GradientArgs {
  const acc *col_scale, *col_inv;  // [M]
  const int64_t* labels;           // [N], in range
  const acc *a, *b;                // [N] weights of each row's two losses; b null: not symmetric
  const acc* c;                    // [M] c_j = sum of b_i over the rows with label j; null: as b
  const acc *row_hi, *row_lo;      // [N] row lse = hi + lo
  const acc *col_hi, *col_lo;      // [M] column lse = hi + lo (unused without c)
  acc* dscale_rows;                // [N] out, summed over the column blocks
};
#endif

namespace PK_CONTRASTIVE_NS {
namespace {

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

// f(k, n) over the vectors of W lanes of a row of C elements (n = valid lanes).
template <typename F>
inline void for_each_vector(int64_t C, int64_t W, F&& f) {
  for (int64_t k = 0; k < C; k += W) f(k, std::min(W, C - k));
}

// Merge of running (m, s) with a block's (m_b, s_b), as in the header. A shift of 0 where
// the max is -inf (no finite logit yet): no -inf - -inf. NaN and +inf give NaN, as PyTorch's
// log_softmax does.
template <typename acc>
inline void merge_stats(acc& m, acc& s, acc m_b, acc s_b) {
  const acc nm = (std::isnan(m) || std::isnan(m_b)) ? m + m_b : std::max(m, m_b);
  const acc shift = nm == -std::numeric_limits<acc>::infinity() ? acc(0) : nm;
  s = s * std::exp(m - shift) + s_b * std::exp(m_b - shift);
  m = nm;
}

// Pass row_stats for one block row x[0..C) against col_scale[0..C): (m_b, s_b); s_b is 0
// when m_b is -inf or NaN.
template <typename acc>
std::pair<acc, acc> row_stats(const acc* x, const acc* col_scale, int64_t C) {
  constexpr int64_t W = V<acc>::size();
  const acc ninf = -std::numeric_limits<acc>::infinity();
  V<acc> vm(ninf);
  for_each_vector(C, W, [&](int64_t k, int64_t n) {
    vm = at::vec::maximum(vm, keep(load(x + k, n) * load(col_scale + k, n), n, ninf));
  });
  const acc m = hmax(vm);
  if (!(m > ninf)) return {m, acc(0)};
  const V<acc> vmax(m);
  V<acc> vs(0);
  for_each_vector(C, W, [&](int64_t k, int64_t n) {
    vs += keep(vexp(load(x + k, n) * load(col_scale + k, n) - vmax), n, acc(0));
  });
  return {m, hsum(vs)};
}

// Pass column_stats for the columns [k0, k0 + w) of a block of `rows` rows (row stride C):
// the block's max and sum of exp per column, merged into the running cm, cs (set by the
// first row block).
template <typename acc, int64_t kVecs>
void column_chunk_stats(const acc* x, int64_t rows, int64_t C, int64_t k0, int64_t w,
                        const acc* col_scale, bool first, acc* cm, acc* cs) {
  constexpr int64_t W = V<acc>::size();
  const acc ninf = -std::numeric_limits<acc>::infinity();
  const V<acc> vninf(ninf), zero(0);
  const int64_t nv = (w + W - 1) / W;
  V<acc> sc[kVecs], bm[kVecs], bs[kVecs];
  for (int64_t v = 0; v < nv; ++v) {
    sc[v] = load(col_scale + k0 + v * W, std::min(W, w - v * W));
    bm[v] = vninf;
    bs[v] = zero;
  }
  auto logits = [&](int64_t r, int64_t v) {  // lanes past the chunk: zeros, never stored
    return load(x + r * C + k0 + v * W, std::min(W, w - v * W)) * sc[v];
  };
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t v = 0; v < nv; ++v) bm[v] = at::vec::maximum(bm[v], logits(r, v));
  for (int64_t v = 0; v < nv; ++v) {  // the sums' shift: 0 where the max is -inf
    const V<acc> shift = V<acc>::blendv(bm[v], zero, bm[v] == vninf);
    for (int64_t r = 0; r < rows; ++r) bs[v] += vexp(logits(r, v) - shift);
    bm[v] = shift;
  }
  for (int64_t v = 0; v < nv; ++v) {
    const int64_t k = k0 + v * W, n = std::min(W, w - v * W);
    if (first) {
      bm[v].store(cm + k, n);
      bs[v].store(cs + k, n);
      continue;
    }
    const V<acc> om = V<acc>::loadu(cm + k, n), os = V<acc>::loadu(cs + k, n);
    const V<acc> nm = at::vec::maximum(om, bm[v]);
    const V<acc> shift = V<acc>::blendv(nm, zero, nm == vninf);
    (os * vexp(om - shift) + bs[v] * vexp(bm[v] - shift)).store(cs + k, n);
    nm.store(cm + k, n);
  }
}

// Pass gradient for one block row x[0..C) (columns c0..; overwritten with dLoss/dx): returns
// the row's sum_k G x col_inv over the block. Each lse comes as hi + lo (split_lse):
// L - lse = (L - hi) - lo keeps a float32 lse's digits beyond the float32 rounding of L.
template <typename acc>
acc gradient_row(acc* x, int64_t C, int64_t c0, const GradientArgs<acc>& g, int64_t i) {
  constexpr int64_t W = V<acc>::size();
  const V<acc> va(g.a[i]), vhi(g.row_hi[i]), vlo(g.row_lo[i]);
  const acc *sc = g.col_scale + c0, *inv = g.col_inv + c0;
  // the softmax terms a exp(L - rl) + c_j exp(L - cl_j) of the vector at k (n lanes)
  auto softmax_terms = [&](const V<acc>& L, int64_t k, int64_t n) {
    V<acc> d = va * vexp((L - vhi) - vlo);
    if (g.c != nullptr) {
      const V<acc> t = (L - load(g.col_hi + c0 + k, n)) - load(g.col_lo + c0 + k, n);
      d = at::vec::fmadd(load(g.c + c0 + k, n), vexp(t), d);
    }
    return keep(d, n, acc(0));  // lanes past n may be inf (exp(0 - lse)): out of the dot
  };
  const int64_t y = g.labels[i] - c0;  // the positive's column in this block, if any
  const bool has_pos = y >= 0 && y < C;
  const int64_t ky = has_pos ? y / W * W : 0, ny = std::min(W, C - ky);
  const V<acc> x_y = load(x + ky, ny);  // the vector holding the positive, before it is overwritten
  const acc x_pos = has_pos ? x[y] : acc(0);
  V<acc> vdot(0);
  for_each_vector(C, W, [&](int64_t k, int64_t n) {
    const V<acc> xk = load(x + k, n), sck = load(sc + k, n);
    const V<acc> d = softmax_terms(xk * sck, k, n);
    vdot = at::vec::fmadd(d, xk * load(inv + k, n), vdot);
    (d * sck).store(x + k, n);
  });
  if (!has_pos) return hsum(vdot);
  // The positive: G = d - w_pos, subtracted before the scaling. A confident row's G there is
  // a small difference of terms near w_pos; scaled first, it would carry the rounding of
  // d * col_scale (test_confident_rows_gradient_keeps_float32_precision).
  const acc w_pos = g.a[i] + (g.b != nullptr ? g.b[i] : acc(0));
  const V<acc> sc_y = load(sc + ky, ny);
  acc d_y[W];
  softmax_terms(x_y * sc_y, ky, ny).store(d_y);
  d_y[y - ky] -= w_pos;
  (V<acc>::loadu(d_y) * sc_y).store(x + ky, ny);
  return hsum(vdot) - w_pos * x_pos * inv[y];
}

// Pass row_stats for the block's rows [b, e): merged into the running row stats.
template <typename acc>
void block_row_stats(const acc* x, int64_t b, int64_t e, int64_t C, int64_t r0, int64_t c0,
                     const ForwardArgs<acc>& f) {
  for (int64_t r = b; r < e; ++r) {
    const int64_t i = r0 + r, y = f.labels[i] - c0;
    const auto [m_b, s_b] = row_stats(x + r * C, f.col_scale + c0, C);
    if (c0 == 0) {
      f.row_max[i] = m_b;
      f.row_sum[i] = s_b;
    } else {
      merge_stats(f.row_max[i], f.row_sum[i], m_b, s_b);
    }
    if (y >= 0 && y < C) f.pos[i] = x[r * C + y] * f.col_scale[c0 + y];
  }
}

}  // namespace

// Passes row_stats and column_stats over the block of `rows` x C logits at (r0, c0), in one
// parallel loop: each of the P parts takes 1/P of the rows and 1/P of the column chunks (a
// chunk of columns walked row by row: 1024 rows x 256 float32 columns stay in L2 between the
// max and the sum). Every row and chunk is reduced the same way whatever P is.
template <typename acc>
void forward_block(const acc* x, int64_t rows, int64_t C, int64_t r0, int64_t c0,
                   const ForwardArgs<acc>& f) {
  constexpr int64_t kVecs = 256 / V<acc>::size();
  constexpr int64_t kChunk = kVecs * V<acc>::size();
  const int64_t chunks = f.col_max == nullptr ? 0 : (C + kChunk - 1) / kChunk;
  const int64_t P = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), rows + chunks));
  at::parallel_for(0, P, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      block_row_stats(x, rows * p / P, rows * (p + 1) / P, C, r0, c0, f);
      for (int64_t k = chunks * p / P; k < chunks * (p + 1) / P; ++k) {
        column_chunk_stats<acc, kVecs>(x, rows, C, k * kChunk, std::min(kChunk, C - k * kChunk),
                                       f.col_scale + c0, r0 == 0, f.col_max + c0, f.col_sum + c0);
      }
    }
  });
}

// Pass gradient over the block at (r0, c0): x becomes dLoss/dx; each row's share of
// d(logit_scale) is added to dscale_rows (set by the first column block).
template <typename acc>
void gradient_block(acc* x, int64_t rows, int64_t C, int64_t r0, int64_t c0,
                    const GradientArgs<acc>& g) {
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const acc part = gradient_row(x + r * C, C, c0, g, r0 + r);
      g.dscale_rows[r0 + r] = c0 == 0 ? part : g.dscale_rows[r0 + r] + part;
    }
  });
}

template void forward_block<float>(const float*, int64_t, int64_t, int64_t, int64_t,
                                   const ForwardArgs<float>&);
template void forward_block<double>(const double*, int64_t, int64_t, int64_t, int64_t,
                                    const ForwardArgs<double>&);
template void gradient_block<float>(float*, int64_t, int64_t, int64_t, int64_t,
                                    const GradientArgs<float>&);
template void gradient_block<double>(double*, int64_t, int64_t, int64_t, int64_t,
                                     const GradientArgs<double>&);

}  // namespace PK_CONTRASTIVE_NS
}  // namespace cpu
}  // namespace pykernels
