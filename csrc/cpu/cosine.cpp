// CPU kernels of the cosine family: row-wise cosine similarity, feature distances and
// pairwise cosine similarity. One task per block of rows (at::parallel_for); inside a
// row, at::vec vectors in the accumulation dtype. Each row is reduced by one thread in
// a fixed order, so results do not depend on the thread count.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <array>
#include <cmath>

#include "common/cosine_args.h"
#include "common/cpu_vec.h"
#include "common/normalize.h"

namespace pykernels {
namespace cpu {
namespace {

template <typename T>
using Vec = typename VecIO<T>::Vec;

template <typename acc>
inline acc vsum(const at::vec::Vectorized<acc>& v) {
  return at::vec::vec_reduce_all<acc>(
      [](at::vec::Vectorized<acc>& a, at::vec::Vectorized<acc>& b) { return a + b; }, v);
}

// Applies f(a, b) to consecutive vectors of two rows; the tail is zero-padded.
template <typename scalar_t, typename F>
inline void for_each_vec(const scalar_t* x1, const scalar_t* x2, int64_t D, F&& f) {
  using IO = VecIO<scalar_t>;
  int64_t i = 0;
  for (; i + IO::kWidth <= D; i += IO::kWidth) f(i, IO::kWidth, IO::load(x1 + i), IO::load(x2 + i));
  if (i < D) f(i, D - i, IO::load(x1 + i, D - i), IO::load(x2 + i, D - i));
}

// dot(x1, x2), |x1|^2, |x2|^2 of one row. Four independent accumulators per sum keep
// the FMA units busy (one chain per sum would wait on FMA latency every step); they are
// combined in a fixed order, so the result stays deterministic.
template <typename scalar_t>
inline std::array<acc_t<scalar_t>, 3> dot_and_squares(const scalar_t* x1, const scalar_t* x2,
                                                      int64_t D) {
  using IO = VecIO<scalar_t>;
  using V = Vec<scalar_t>;
  constexpr int64_t W = IO::kWidth, U = 4;
  V d[U] = {V(0), V(0), V(0), V(0)}, s1[U] = {V(0), V(0), V(0), V(0)}, s2[U] = {V(0), V(0), V(0), V(0)};
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

// |x1 - x2|^2 of one row.
template <typename scalar_t>
inline acc_t<scalar_t> squared_distance(const scalar_t* x1, const scalar_t* x2, int64_t D) {
  Vec<scalar_t> s(0);
  for_each_vec(x1, x2, D, [&](int64_t, int64_t, const Vec<scalar_t>& a, const Vec<scalar_t>& b) {
    auto diff = a - b;
    s = at::vec::fmadd(diff, diff, s);
  });
  return vsum(s);
}

// g1 = k11 x1 + k12 x2 and g2 = k21 x1 + k22 x2 for one row (every row-wise backward
// in this family is of this form).
template <typename scalar_t, typename acc = acc_t<scalar_t>>
inline void write_linear_pair(const scalar_t* x1, const scalar_t* x2, int64_t D, acc k11,
                              acc k12, acc k21, acc k22, scalar_t* g1, scalar_t* g2) {
  using IO = VecIO<scalar_t>;
  const Vec<scalar_t> v11(k11), v12(k12), v21(k21), v22(k22);
  for_each_vec(x1, x2, D, [&](int64_t i, int64_t n, const Vec<scalar_t>& a, const Vec<scalar_t>& b) {
    IO::store(g1 + i, at::vec::fmadd(v11, a, v12 * b), n);
    IO::store(g2 + i, at::vec::fmadd(v21, a, v22 * b), n);
  });
}

// out = k1 x1 + k2 x2 for one row.
template <typename scalar_t, typename acc = acc_t<scalar_t>>
inline void write_linear(const scalar_t* x1, const scalar_t* x2, int64_t D, acc k1, acc k2,
                         scalar_t* out) {
  using IO = VecIO<scalar_t>;
  const Vec<scalar_t> v1(k1), v2(k2);
  for_each_vec(x1, x2, D, [&](int64_t i, int64_t n, const Vec<scalar_t>& a, const Vec<scalar_t>& b) {
    IO::store(out + i, at::vec::fmadd(v1, a, v2 * b), n);
  });
}

// Coefficients of the cosine backward for one row, given upstream grad g:
//   c = w / (a b), a = max(n1, eps), b = max(n2, eps)
//   dc/dx1 = x2 / (a b) - [n1 > eps] c x1 / a^2   (and symmetrically for x2).
template <typename acc>
inline std::array<acc, 4> cosine_grad_coefs(acc g, acc w, acc ss1, acc ss2, acc eps) {
  const acc n1 = std::sqrt(ss1), n2 = std::sqrt(ss2);
  const acc a = std::max(n1, eps), b = std::max(n2, eps);
  const acc c = w / (a * b);
  const acc k11 = n1 > eps ? -g * c / (a * a) : acc(0);
  const acc k22 = n2 > eps ? -g * c / (b * b) : acc(0);
  const acc cross = g / (a * b);
  return {k11, cross, cross, k22};
}

template <typename acc>
inline acc cosine_value(acc w, acc ss1, acc ss2, acc eps) {
  return w / (std::max(std::sqrt(ss1), eps) * std::max(std::sqrt(ss2), eps));
}

// Runs f(row) for every row in parallel.
template <typename F>
inline void for_each_row(int64_t rows, int64_t D, F&& f) {
  at::parallel_for(0, rows, row_grain(D), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) f(r);
  });
}

at::Tensor cosine_similarity_cpu(const at::Tensor& x1_, const at::Tensor& x2_, double eps) {
  const char* op = "pykernels::cosine_similarity";
  check_rowwise_pair(op, "x1", x1_, "x2", x2_, at::kCPU);
  check_positive(op, "eps", eps);
  const auto x1 = x1_.contiguous(), x2 = x2_.contiguous();
  auto out = at::empty(x1.sizes().slice(0, x1.dim() - 1), x1.options());
  const int64_t D = x1.size(-1), rows = out.numel();  // D == 0: every row is 0
  if (out.numel() == 0) return out;
  PK_DISPATCH_FLOATING(x1.scalar_type(), "cosine_similarity_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const scalar_t *p1 = x1.const_data_ptr<scalar_t>(), *p2 = x2.const_data_ptr<scalar_t>();
    scalar_t* po = out.data_ptr<scalar_t>();
    for_each_row(rows, D, [&](int64_t r) {
      auto [w, ss1, ss2] = dot_and_squares(p1 + r * D, p2 + r * D, D);
      po[r] = static_cast<scalar_t>(cosine_value<acc>(w, ss1, ss2, acc(eps)));
    });
  });
  return out;
}

// sign = +1 for cos, -1 for the (1 - cos) feature distance.
std::tuple<at::Tensor, at::Tensor> cosine_backward_impl(const at::Tensor& grad_,
                                                        const at::Tensor& x1,
                                                        const at::Tensor& x2, double eps,
                                                        double sign) {
  auto g1 = at::empty_like(x1), g2 = at::empty_like(x2);
  const int64_t D = x1.size(-1), rows = D == 0 ? 0 : x1.numel() / D;
  if (rows == 0) return {g1.zero_(), g2.zero_()};
  PK_DISPATCH_FLOATING(x1.scalar_type(), "cosine_backward_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const auto grad = grad_.to(c10::CppTypeToScalarType<acc>::value).contiguous();
    const acc* pg = grad.const_data_ptr<acc>();
    const scalar_t *p1 = x1.const_data_ptr<scalar_t>(), *p2 = x2.const_data_ptr<scalar_t>();
    scalar_t *o1 = g1.data_ptr<scalar_t>(), *o2 = g2.data_ptr<scalar_t>();
    for_each_row(rows, D, [&](int64_t r) {
      const scalar_t *a = p1 + r * D, *b = p2 + r * D;
      auto [w, ss1, ss2] = dot_and_squares(a, b, D);
      auto k = cosine_grad_coefs<acc>(acc(sign) * pg[r], w, ss1, ss2, acc(eps));
      write_linear_pair(a, b, D, k[0], k[1], k[2], k[3], o1 + r * D, o2 + r * D);
    });
  });
  return {g1, g2};
}

std::tuple<at::Tensor, at::Tensor> cosine_similarity_backward_cpu(const at::Tensor& grad,
                                                                  const at::Tensor& x1,
                                                                  const at::Tensor& x2,
                                                                  double eps) {
  const char* op = "pykernels::cosine_similarity_backward";
  check_rowwise_pair(op, "x1", x1, "x2", x2, at::kCPU);
  check_row_grad(op, grad, x1);
  check_positive(op, "eps", eps);
  return cosine_backward_impl(grad, x1.contiguous(), x2.contiguous(), eps, 1.0);
}

at::Tensor feature_distance_cpu(const at::Tensor& s_, const at::Tensor& t_,
                                c10::string_view kind_, double eps) {
  const char* op = "pykernels::feature_distance";
  check_rowwise_pair(op, "student", s_, "teacher", t_, at::kCPU);
  const int kind = feature_kind(op, kind_);
  check_positive(op, "eps", eps);
  const auto s = s_.contiguous(), t = t_.contiguous();
  const auto acc_type = at::toOpMathType(s.scalar_type());
  auto out = at::empty(s.sizes().slice(0, s.dim() - 1), s.options().dtype(acc_type));
  const int64_t D = s.size(-1), rows = out.numel();
  if (out.numel() == 0) return out;
  PK_DISPATCH_FLOATING(s.scalar_type(), "feature_distance_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const scalar_t *ps = s.const_data_ptr<scalar_t>(), *pt = t.const_data_ptr<scalar_t>();
    acc* po = out.data_ptr<acc>();
    for_each_row(rows, D, [&](int64_t r) {
      if (kind == 0) {
        po[r] = squared_distance(ps + r * D, pt + r * D, D);
      } else {
        auto [w, ss1, ss2] = dot_and_squares(ps + r * D, pt + r * D, D);
        po[r] = acc(1) - cosine_value<acc>(w, ss1, ss2, acc(eps));
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> feature_distance_backward_cpu(const at::Tensor& grad_,
                                                                 const at::Tensor& s_,
                                                                 const at::Tensor& t_,
                                                                 c10::string_view kind_,
                                                                 double eps) {
  const char* op = "pykernels::feature_distance_backward";
  check_rowwise_pair(op, "student", s_, "teacher", t_, at::kCPU);
  check_row_grad(op, grad_, s_);
  const int kind = feature_kind(op, kind_);
  check_positive(op, "eps", eps);
  const auto s = s_.contiguous(), t = t_.contiguous();
  if (kind == 1) return cosine_backward_impl(grad_, s, t, eps, -1.0);
  // d|s - t|^2 = 2 (s - t) ds - 2 (s - t) dt
  auto gs = at::empty_like(s), gt = at::empty_like(t);
  const int64_t D = s.size(-1), rows = D == 0 ? 0 : s.numel() / D;
  if (rows == 0) return {gs.zero_(), gt.zero_()};
  PK_DISPATCH_FLOATING(s.scalar_type(), "feature_distance_backward_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const auto grad = grad_.to(c10::CppTypeToScalarType<acc>::value).contiguous();
    const acc* pg = grad.const_data_ptr<acc>();
    const scalar_t *ps = s.const_data_ptr<scalar_t>(), *pt = t.const_data_ptr<scalar_t>();
    scalar_t *os = gs.data_ptr<scalar_t>(), *ot = gt.data_ptr<scalar_t>();
    for_each_row(rows, D, [&](int64_t r) {
      const acc k = 2 * pg[r];
      write_linear_pair(ps + r * D, pt + r * D, D, k, -k, -k, k, os + r * D, ot + r * D);
    });
  });
  return {gs, gt};
}

}  // namespace

// Rows of x divided by max(|row|, eps), in x's dtype (declared in common/normalize.h).
at::Tensor normalize_rows(const at::Tensor& x, double eps) {
  auto out = at::empty_like(x);
  const int64_t D = x.size(-1), rows = D == 0 ? 0 : x.numel() / D;
  if (rows == 0) return out;
  PK_DISPATCH_FLOATING(x.scalar_type(), "normalize_rows_cpu", [&] {
    using acc = acc_t<scalar_t>;
    using IO = VecIO<scalar_t>;
    const scalar_t* px = x.const_data_ptr<scalar_t>();
    scalar_t* po = out.data_ptr<scalar_t>();
    for_each_row(rows, D, [&](int64_t r) {
      const scalar_t* row = px + r * D;
      const acc inv = acc(1) / std::max(std::sqrt(dot_and_squares(row, row, D)[0]), acc(eps));
      const Vec<scalar_t> vinv(inv);
      for_each_vec(row, row, D, [&](int64_t i, int64_t n, const Vec<scalar_t>& a, const Vec<scalar_t>&) {
        IO::store(po + r * D + i, a * vinv, n);
      });
    });
  });
  return out;
}

// Gradient of x -> x / max(|x|, eps) per row, given the gradient gy of the output:
//   gx = (gy - [n > eps] y (y . gy)) / max(n, eps),  y = x / n.
at::Tensor normalize_rows_backward(const at::Tensor& gy, const at::Tensor& x, double eps) {
  auto gx = at::empty_like(x);
  const int64_t D = x.size(-1), rows = D == 0 ? 0 : x.numel() / D;
  if (rows == 0) return gx.zero_();
  PK_DISPATCH_FLOATING(x.scalar_type(), "normalize_rows_backward_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const scalar_t *px = x.const_data_ptr<scalar_t>(), *pg = gy.const_data_ptr<scalar_t>();
    scalar_t* po = gx.data_ptr<scalar_t>();
    for_each_row(rows, D, [&](int64_t r) {
      const scalar_t *xr = px + r * D, *gr = pg + r * D;
      auto [xg, xx, gg] = dot_and_squares(xr, gr, D);
      (void)gg;
      const acc n = std::sqrt(xx), a = std::max(n, acc(eps));
      const acc kx = n > eps ? -xg / (n * n * a) : acc(0);
      write_linear(xr, gr, D, kx, acc(1) / a, po + r * D);
    });
  });
  return gx;
}

namespace {

// Half-precision inputs run in float32: their normalized rows, rounded to the half dtype
// for the product, made a small cosine a cancellation of rounded terms (0.29% off at a
// cosine of 0.0115 from float16 rows, fuzz), and CPU half products are no faster.
at::Tensor in_acc(const at::Tensor& x) {
  return x.to(at::toOpMathType(x.scalar_type())).contiguous();
}

at::Tensor pairwise_cosine_similarity_cpu(const at::Tensor& a, const at::Tensor& b, double eps) {
  const char* op = "pykernels::pairwise_cosine_similarity";
  check_pairwise(op, a, b, at::kCPU);
  check_positive(op, "eps", eps);
  // Normalising the N + M rows first costs (N + M) D; scaling the N x M output would
  // cost N M, more whenever N M > (N + M) D, which is the usual case.
  return at::matmul(normalize_rows(in_acc(a), eps), normalize_rows(in_acc(b), eps).transpose(1, 2))
      .to(a.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> pairwise_cosine_similarity_backward_cpu(
    const at::Tensor& grad, const at::Tensor& a_, const at::Tensor& b_, double eps) {
  const char* op = "pykernels::pairwise_cosine_similarity_backward";
  check_pairwise(op, a_, b_, at::kCPU);
  check_positive(op, "eps", eps);
  check_pairwise_grad(op, grad, a_, b_);
  const auto a = in_acc(a_), b = in_acc(b_);
  const auto g = grad.to(a.scalar_type());
  const auto ga_hat = at::matmul(g, normalize_rows(b, eps)).contiguous();
  const auto gb_hat = at::matmul(g.transpose(1, 2), normalize_rows(a, eps)).contiguous();
  return {normalize_rows_backward(ga_hat, a, eps).to(a_.scalar_type()),
          normalize_rows_backward(gb_hat, b, eps).to(b_.scalar_type())};
}

}  // namespace
}  // namespace cpu
}  // namespace pykernels

TORCH_LIBRARY_IMPL(pykernels, CPU, m) {
  using namespace pykernels::cpu;
  m.impl("cosine_similarity", &cosine_similarity_cpu);
  m.impl("cosine_similarity_backward", &cosine_similarity_backward_cpu);
  m.impl("feature_distance", &feature_distance_cpu);
  m.impl("feature_distance_backward", &feature_distance_backward_cpu);
  m.impl("pairwise_cosine_similarity", &pairwise_cosine_similarity_cpu);
  m.impl("pairwise_cosine_similarity_backward", &pairwise_cosine_similarity_backward_cpu);
}
