// The CPU kernels of the cosine family, compiled once per CPU capability: included by
// cosine.cpp (baseline flags, namespace `generic`) and by cosine_avx2.cpp (AVX2 + FMA,
// namespace `avx2`), which define PK_COSINE_NS first; cosine.cpp picks one at run time. No
// include guard: each translation unit includes this once.
//
// Row-wise kernels run one at::parallel_for task per block of rows; each row is reduced by
// one thread in a fixed order, so results do not depend on the thread count. Inside a row,
// at::vec vectors of the accumulation dtype. Passes:
//   row_dots     w = x1 . x2,  s1 = |x1|^2,  s2 = |x2|^2
//   row_sq_dist  d = |x1 - x2|^2
//   write_pair   g1 = k11 x1 + k12 x2,  g2 = k21 x1 + k22 x2   (every backward has this form)
#ifndef PK_COSINE_NS
#error "define PK_COSINE_NS before including cpu/cosine_kernels.h"
#endif

namespace pykernels {
namespace cpu {

#ifndef PK_COSINE_ROW_OP
#define PK_COSINE_ROW_OP
// What a row-wise kernel computes per row.
enum class RowOp { kCosine, kOneMinusCosine, kSquaredDistance };
#endif

namespace PK_COSINE_NS {
namespace {

template <typename T>
using Vec = typename VecIO<T>::Vec;

template <typename acc>
inline acc vsum(const at::vec::Vectorized<acc>& v) {
  return at::vec::vec_reduce_all<acc>(
      [](at::vec::Vectorized<acc>& a, at::vec::Vectorized<acc>& b) { return a + b; }, v);
}

// f(i, n, a, b) for consecutive vectors a, b of two rows (n valid lanes, the rest zero).
template <typename scalar_t, typename F>
inline void for_each_vec(const scalar_t* x1, const scalar_t* x2, int64_t D, F&& f) {
  using IO = VecIO<scalar_t>;
  int64_t i = 0;
  for (; i + IO::kWidth <= D; i += IO::kWidth) f(i, IO::kWidth, IO::load(x1 + i), IO::load(x2 + i));
  if (i < D) f(i, D - i, IO::load(x1 + i, D - i), IO::load(x2 + i, D - i));
}

// Pass row_dots: {x1 . x2, |x1|^2, |x2|^2}. Four accumulators per sum keep the FMA units
// busy (one chain would wait on FMA latency every step); they are combined in a fixed
// order, so the result is deterministic.
template <typename scalar_t>
inline std::array<acc_t<scalar_t>, 3> row_dots(const scalar_t* x1, const scalar_t* x2, int64_t D) {
  using IO = VecIO<scalar_t>;
  using V = Vec<scalar_t>;
  constexpr int64_t W = IO::kWidth, U = 4;
  V d[U] = {V(0), V(0), V(0), V(0)}, s1[U] = {V(0), V(0), V(0), V(0)},
    s2[U] = {V(0), V(0), V(0), V(0)};
  int64_t i = 0;
  for (; i + U * W <= D; i += U * W) {
    for (int64_t u = 0; u < U; ++u) {
      const V a = IO::load(x1 + i + u * W), b = IO::load(x2 + i + u * W);
      d[u] = at::vec::fmadd(a, b, d[u]);
      s1[u] = at::vec::fmadd(a, a, s1[u]);
      s2[u] = at::vec::fmadd(b, b, s2[u]);
    }
  }
  for_each_vec(x1 + i, x2 + i, D - i, [&](int64_t, int64_t, const V& a, const V& b) {
    d[0] = at::vec::fmadd(a, b, d[0]);
    s1[0] = at::vec::fmadd(a, a, s1[0]);
    s2[0] = at::vec::fmadd(b, b, s2[0]);
  });
  return {vsum((d[0] + d[1]) + (d[2] + d[3])), vsum((s1[0] + s1[1]) + (s1[2] + s1[3])),
          vsum((s2[0] + s2[1]) + (s2[2] + s2[3]))};
}

// Pass row_sq_dist: |x1 - x2|^2, two accumulators (as row_dots, for FMA latency).
template <typename scalar_t>
inline acc_t<scalar_t> row_sq_dist(const scalar_t* x1, const scalar_t* x2, int64_t D) {
  using IO = VecIO<scalar_t>;
  using V = Vec<scalar_t>;
  constexpr int64_t W = IO::kWidth;
  V s0(0), s1(0);
  int64_t i = 0;
  for (; i + 2 * W <= D; i += 2 * W) {
    const V d0 = IO::load(x1 + i) - IO::load(x2 + i);
    const V d1 = IO::load(x1 + i + W) - IO::load(x2 + i + W);
    s0 = at::vec::fmadd(d0, d0, s0);
    s1 = at::vec::fmadd(d1, d1, s1);
  }
  for_each_vec(x1 + i, x2 + i, D - i, [&](int64_t, int64_t, const V& a, const V& b) {
    const V d = a - b;
    s0 = at::vec::fmadd(d, d, s0);
  });
  return vsum(s0 + s1);
}

// Pass write_pair: g1 = k11 x1 + k12 x2 and g2 = k21 x1 + k22 x2 for one row; a null
// output is skipped (its gradient was not asked for).
template <typename scalar_t, typename acc = acc_t<scalar_t>>
inline void write_pair(const scalar_t* x1, const scalar_t* x2, int64_t D,
                       const std::array<acc, 4>& k, scalar_t* g1, scalar_t* g2) {
  using IO = VecIO<scalar_t>;
  using V = Vec<scalar_t>;
  const V k11(k[0]), k12(k[1]), k21(k[2]), k22(k[3]);
  for_each_vec(x1, x2, D, [&](int64_t i, int64_t n, const V& a, const V& b) {
    if (g1 != nullptr) IO::store(g1 + i, at::vec::fmadd(k11, a, k12 * b), n);
    if (g2 != nullptr) IO::store(g2 + i, at::vec::fmadd(k21, a, k22 * b), n);
  });
}

// cos = w / (a b), a = max(sqrt(s1), eps), b = max(sqrt(s2), eps): each norm clamped on
// its own, as torch.nn.functional.cosine_similarity.
template <typename acc>
inline acc cosine_value(const std::array<acc, 3>& dots, acc eps) {
  return dots[0] / (std::max(std::sqrt(dots[1]), eps) * std::max(std::sqrt(dots[2]), eps));
}

// write_pair coefficients of g * dcos/d(x1, x2):
//   dcos/dx1 = x2 / (a b) - [n1 > eps] cos x1 / a^2   (and symmetrically for x2).
template <typename acc>
inline std::array<acc, 4> cosine_grad_coefs(acc g, const std::array<acc, 3>& dots, acc eps) {
  const acc n1 = std::sqrt(dots[1]), n2 = std::sqrt(dots[2]);
  const acc a = std::max(n1, eps), b = std::max(n2, eps);
  const acc c = dots[0] / (a * b), cross = g / (a * b);
  return {n1 > eps ? -g * c / (a * a) : acc(0), cross, cross, n2 > eps ? -g * c / (b * b) : acc(0)};
}

// Runs f(row) for every row, in parallel over blocks of rows.
template <typename F>
inline void for_each_row(int64_t rows, int64_t D, F&& f) {
  at::parallel_for(0, rows, row_grain(D), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) f(r);
  });
}

// Per row of x: pass row_dots on (x, x), then f(r, 1 / max(|x_r|, eps)).
template <typename scalar_t, typename F>
void for_each_inverse_norm(const scalar_t* px, int64_t rows, int64_t D, double eps, F&& f) {
  using acc = acc_t<scalar_t>;
  for_each_row(rows, D, [&](int64_t r) {
    const acc n = std::sqrt(row_dots(px + r * D, px + r * D, D)[1]);
    f(r, acc(1) / std::max(n, acc(eps)));
  });
}

// The write_pair coefficients of grad g * d(op)/d(x1, x2) for one row.
template <typename scalar_t, typename acc = acc_t<scalar_t>>
std::array<acc, 4> grad_coefs(RowOp op, acc g, const scalar_t* a, const scalar_t* b, int64_t D,
                              acc eps) {
  switch (op) {
    case RowOp::kCosine:
      return cosine_grad_coefs<acc>(g, row_dots(a, b, D), eps);
    case RowOp::kOneMinusCosine:  // d(1 - cos) = -dcos
      return cosine_grad_coefs<acc>(-g, row_dots(a, b, D), eps);
    default:  // d|x1 - x2|^2 = 2 (x1 - x2) dx1 - 2 (x1 - x2) dx2
      return {2 * g, -2 * g, -2 * g, 2 * g};
  }
}

}  // namespace

// out[r] = op(x1_r, x2_r): x1, x2 contiguous [rows, D]; out [rows] in x1's dtype (kCosine)
// or the accumulation dtype.
void rowwise_forward(const at::Tensor& x1, const at::Tensor& x2, double eps, RowOp op,
                     at::Tensor& out) {
  const int64_t D = x1.size(-1), rows = out.numel();  // D == 0: every row's value is 0
  PK_DISPATCH_FLOATING(x1.scalar_type(), "rowwise_forward_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const scalar_t *p1 = x1.const_data_ptr<scalar_t>(), *p2 = x2.const_data_ptr<scalar_t>();
    auto value = [&](int64_t r) -> acc {
      if (op == RowOp::kSquaredDistance) return row_sq_dist(p1 + r * D, p2 + r * D, D);
      const acc c = cosine_value(row_dots(p1 + r * D, p2 + r * D, D), acc(eps));
      return op == RowOp::kCosine ? c : acc(1) - c;
    };
    if (op == RowOp::kCosine) {
      scalar_t* po = out.data_ptr<scalar_t>();
      for_each_row(rows, D, [&](int64_t r) { po[r] = static_cast<scalar_t>(value(r)); });
    } else {
      acc* po = out.data_ptr<acc>();
      for_each_row(rows, D, [&](int64_t r) { po[r] = value(r); });
    }
  });
}

// g1, g2 = grad * d(op)/d(x1, x2) per row; an undefined g1 or g2 is not computed. grad:
// [rows] in the accumulation dtype; x1, x2, g1, g2 contiguous [rows, D].
void rowwise_backward(const at::Tensor& grad, const at::Tensor& x1, const at::Tensor& x2,
                      double eps, RowOp op, at::Tensor& g1, at::Tensor& g2) {
  const int64_t D = x1.size(-1), rows = D == 0 ? 0 : x1.numel() / D;
  PK_DISPATCH_FLOATING(x1.scalar_type(), "rowwise_backward_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const acc* pg = grad.const_data_ptr<acc>();
    const scalar_t *p1 = x1.const_data_ptr<scalar_t>(), *p2 = x2.const_data_ptr<scalar_t>();
    scalar_t* o1 = g1.defined() ? g1.data_ptr<scalar_t>() : nullptr;
    scalar_t* o2 = g2.defined() ? g2.data_ptr<scalar_t>() : nullptr;
    for_each_row(rows, D, [&](int64_t r) {
      const scalar_t *a = p1 + r * D, *b = p2 + r * D;
      write_pair(a, b, D, grad_coefs(op, pg[r], a, b, D, acc(eps)), o1 ? o1 + r * D : nullptr,
                 o2 ? o2 + r * D : nullptr);
    });
  });
}

// inv[r] = 1 / max(|x_r|, eps) (accumulation dtype), and y = x inv per row when y is defined.
void normalize(const at::Tensor& x, double eps, at::Tensor& inv, at::Tensor& y) {
  const int64_t D = x.size(-1), rows = D == 0 ? 0 : x.numel() / D;
  PK_DISPATCH_FLOATING(x.scalar_type(), "normalize_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const scalar_t* px = x.const_data_ptr<scalar_t>();
    acc* pi = inv.defined() ? inv.data_ptr<acc>() : nullptr;
    scalar_t* py = y.defined() ? y.data_ptr<scalar_t>() : nullptr;
    for_each_inverse_norm(px, rows, D, eps, [&](int64_t r, acc v) {
      if (pi != nullptr) pi[r] = v;
      if (py != nullptr) {
        write_pair(px + r * D, px + r * D, D, std::array<acc, 4>{v, 0, 0, 0}, py + r * D,
                   static_cast<scalar_t*>(nullptr));
      }
    });
  });
}

// Pass normalize_backward on rows of (x, g) into out (which may be g):
//   out = k (g - [n > eps] x (x . g) / n^2),  k = 1 / max(n, eps), or 1 when prescaled.
void normalize_backward(const at::Tensor& g, const at::Tensor& x, double eps, bool prescaled,
                        at::Tensor& out) {
  const int64_t D = x.size(-1), rows = D == 0 ? 0 : x.numel() / D;
  PK_DISPATCH_FLOATING(x.scalar_type(), "normalize_backward_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const scalar_t *px = x.const_data_ptr<scalar_t>(), *pg = g.const_data_ptr<scalar_t>();
    scalar_t* po = out.data_ptr<scalar_t>();
    for_each_row(rows, D, [&](int64_t r) {
      const scalar_t *xr = px + r * D, *gr = pg + r * D;
      const auto dots = row_dots(xr, gr, D);  // x . g, |x|^2
      const acc n = std::sqrt(dots[1]), k = prescaled ? acc(1) : acc(1) / std::max(n, acc(eps));
      const acc kx = n > eps ? -k * dots[0] / (n * n) : acc(0);
      write_pair(xr, gr, D, std::array<acc, 4>{kx, k, 0, 0}, po + r * D,
                 static_cast<scalar_t*>(nullptr));
    });
  });
}

}  // namespace PK_COSINE_NS
}  // namespace cpu
}  // namespace pykernels
