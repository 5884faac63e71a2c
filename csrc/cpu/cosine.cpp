// CPU kernels of the cosine family: cosine similarity, feature_distillation_loss (a row-wise
// distance of two feature rows, hence here), pairwise cosine similarity, and the row
// normalisation the contrastive family shares (common/normalize.h).
//
// Row-wise ops run one at::parallel_for task per block of rows; each row is reduced by one
// thread in a fixed order, so results do not depend on the thread count. Inside a row,
// at::vec vectors of the accumulation dtype. Passes:
//   row_dots     w = x1 . x2,  s1 = |x1|^2,  s2 = |x2|^2
//   row_sq_dist  d = |x1 - x2|^2
//   write_pair   g1 = k11 x1 + k12 x2,  g2 = k21 x1 + k22 x2   (every backward has this form)
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <array>
#include <cmath>
#include <tuple>

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

int64_t rows_of(const at::Tensor& x) {
  const int64_t D = x.size(-1);
  return D == 0 ? 0 : x.numel() / D;
}

// The gradients a backward writes: x's shape where asked for, else empty.
std::tuple<at::Tensor, at::Tensor> grad_outputs(const at::Tensor& x1, const at::Tensor& x2,
                                                GradMask mask) {
  return {mask[0] ? at::empty_like(x1) : at::empty({0}, x1.options()),
          mask[1] ? at::empty_like(x2) : at::empty({0}, x2.options())};
}

// The backward of a row-wise op: per row r, coefs(g[r], x1_r, x2_r) gives the write_pair
// coefficients. grad is converted to the accumulation dtype.
template <typename Coefs>
std::tuple<at::Tensor, at::Tensor> rowwise_backward(const at::Tensor& grad_, const at::Tensor& x1_,
                                                    const at::Tensor& x2_, GradMask mask,
                                                    Coefs coefs) {
  const auto x1 = x1_.contiguous(), x2 = x2_.contiguous();
  at::Tensor g1, g2;  // (not structured bindings: C++17 lambdas cannot capture those)
  std::tie(g1, g2) = grad_outputs(x1, x2, mask);
  const int64_t D = x1.size(-1), rows = rows_of(x1);
  if (rows == 0) return {g1.zero_(), g2.zero_()};
  PK_DISPATCH_FLOATING(x1.scalar_type(), "rowwise_backward_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const auto grad = grad_.to(c10::CppTypeToScalarType<acc>::value).contiguous();
    const acc* pg = grad.const_data_ptr<acc>();
    const scalar_t *p1 = x1.const_data_ptr<scalar_t>(), *p2 = x2.const_data_ptr<scalar_t>();
    scalar_t* o1 = mask[0] ? g1.data_ptr<scalar_t>() : nullptr;
    scalar_t* o2 = mask[1] ? g2.data_ptr<scalar_t>() : nullptr;
    for_each_row(rows, D, [&](int64_t r) {
      const scalar_t *a = p1 + r * D, *b = p2 + r * D;
      write_pair(a, b, D, coefs(pg[r], a, b, D), o1 ? o1 + r * D : nullptr,
                 o2 ? o2 + r * D : nullptr);
    });
  });
  return {g1, g2};
}

at::Tensor cosine_similarity_cpu(const at::Tensor& x1_, const at::Tensor& x2_, double eps) {
  check_cosine_similarity("pykernels::cosine_similarity", x1_, x2_, eps, at::kCPU);
  const auto x1 = x1_.contiguous(), x2 = x2_.contiguous();
  auto out = at::empty(x1.sizes().slice(0, x1.dim() - 1), x1.options());
  const int64_t D = x1.size(-1), rows = out.numel();  // D == 0: every row's cosine is 0
  if (rows == 0) return out;
  PK_DISPATCH_FLOATING(x1.scalar_type(), "cosine_similarity_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const scalar_t *p1 = x1.const_data_ptr<scalar_t>(), *p2 = x2.const_data_ptr<scalar_t>();
    scalar_t* po = out.data_ptr<scalar_t>();
    for_each_row(rows, D, [&](int64_t r) {
      po[r] = static_cast<scalar_t>(cosine_value(row_dots(p1 + r * D, p2 + r * D, D), acc(eps)));
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> cosine_similarity_backward_cpu(
    const at::Tensor& grad, const at::Tensor& x1, const at::Tensor& x2, double eps,
    GradMask output_mask) {
  check_cosine_similarity_backward("pykernels::cosine_similarity_backward", grad, x1, x2, eps,
                                   at::kCPU);
  return rowwise_backward(grad, x1, x2, output_mask, [eps](auto g, auto* a, auto* b, int64_t D) {
    using acc = decltype(g);
    return cosine_grad_coefs<acc>(g, row_dots(a, b, D), acc(eps));
  });
}

// Per-row loss, accumulation dtype: |s - t|^2 ("mse") or 1 - cos(s, t) ("cosine").
at::Tensor feature_distillation_loss_cpu(const at::Tensor& student_, const at::Tensor& teacher_,
                                         c10::string_view kind_, double eps) {
  const FeatureKind kind = check_feature_distillation_loss(
      "pykernels::feature_distillation_loss", student_, teacher_, kind_, eps, at::kCPU);
  const auto s = student_.contiguous(), t = teacher_.contiguous();
  const auto acc_type = at::toOpMathType(s.scalar_type());
  auto out = at::empty(s.sizes().slice(0, s.dim() - 1), s.options().dtype(acc_type));
  const int64_t D = s.size(-1), rows = out.numel();
  if (rows == 0) return out;
  PK_DISPATCH_FLOATING(s.scalar_type(), "feature_distillation_loss_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const scalar_t *ps = s.const_data_ptr<scalar_t>(), *pt = t.const_data_ptr<scalar_t>();
    acc* po = out.data_ptr<acc>();
    for_each_row(rows, D, [&](int64_t r) {
      po[r] = kind == FeatureKind::kMse
                  ? row_sq_dist(ps + r * D, pt + r * D, D)
                  : acc(1) - cosine_value(row_dots(ps + r * D, pt + r * D, D), acc(eps));
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> feature_distillation_loss_backward_cpu(
    const at::Tensor& grad, const at::Tensor& student, const at::Tensor& teacher,
    c10::string_view kind_, double eps, GradMask output_mask) {
  const FeatureKind kind = check_feature_distillation_loss_backward(
      "pykernels::feature_distillation_loss_backward", grad, student, teacher, kind_, eps,
      at::kCPU);
  if (kind == FeatureKind::kCosine) {  // d(1 - cos) = -dcos
    return rowwise_backward(grad, student, teacher, output_mask,
                            [eps](auto g, auto* a, auto* b, int64_t D) {
                              using acc = decltype(g);
                              return cosine_grad_coefs<acc>(-g, row_dots(a, b, D), acc(eps));
                            });
  }
  // d|s - t|^2 = 2 (s - t) ds - 2 (s - t) dt
  return rowwise_backward(grad, student, teacher, output_mask, [](auto g, auto*, auto*, int64_t) {
    using acc = decltype(g);
    return std::array<acc, 4>{2 * g, -2 * g, -2 * g, 2 * g};
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

}  // namespace

at::Tensor row_inverse_norms(const at::Tensor& x_, double eps) {
  const auto x = x_.contiguous();
  const auto acc_type = at::toOpMathType(x.scalar_type());
  auto inv = at::empty(x.sizes().slice(0, x.dim() - 1), x.options().dtype(acc_type));
  const int64_t D = x.size(-1), rows = rows_of(x);
  if (rows < inv.numel()) inv.fill_(1.0 / eps);  // D == 0: norms 0, clamped to eps
  if (rows == 0) return inv;
  PK_DISPATCH_FLOATING(x.scalar_type(), "row_inverse_norms_cpu", [&] {
    using acc = acc_t<scalar_t>;
    acc* pi = inv.data_ptr<acc>();
    for_each_inverse_norm(x.const_data_ptr<scalar_t>(), rows, D, eps,
                          [&](int64_t r, acc v) { pi[r] = v; });
  });
  return inv;
}

at::Tensor normalize_rows(const at::Tensor& x_, double eps) {
  const auto x = x_.contiguous();
  auto out = at::empty_like(x);
  const int64_t D = x.size(-1), rows = rows_of(x);
  if (rows == 0) return out;
  PK_DISPATCH_FLOATING(x.scalar_type(), "normalize_rows_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const scalar_t* px = x.const_data_ptr<scalar_t>();
    scalar_t* po = out.data_ptr<scalar_t>();
    for_each_inverse_norm(px, rows, D, eps, [&](int64_t r, acc inv) {
      const scalar_t* row = px + r * D;
      write_pair(row, row, D, std::array<acc, 4>{inv, 0, 0, 0}, po + r * D, static_cast<scalar_t*>(nullptr));
    });
  });
  return out;
}

namespace {

// Pass normalize_backward on rows of (x, g) into out (which may be g):
//   out = k (g - [n > eps] x (x . g) / n^2),  k = 1 / max(n, eps), or 1 when prescaled.
void normalize_backward_rows(const at::Tensor& g, const at::Tensor& x, double eps, bool prescaled,
                             at::Tensor& out) {
  const int64_t D = x.size(-1), rows = rows_of(x);
  PK_DISPATCH_FLOATING(x.scalar_type(), "normalize_rows_backward_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const scalar_t *px = x.const_data_ptr<scalar_t>(), *pg = g.const_data_ptr<scalar_t>();
    scalar_t* po = out.data_ptr<scalar_t>();
    for_each_row(rows, D, [&](int64_t r) {
      const scalar_t *xr = px + r * D, *gr = pg + r * D;
      const auto [xg, xx, gg] = row_dots(xr, gr, D);
      (void)gg;
      const acc n = std::sqrt(xx), k = prescaled ? acc(1) : acc(1) / std::max(n, acc(eps));
      const acc kx = n > eps ? -k * xg / (n * n) : acc(0);
      write_pair(xr, gr, D, std::array<acc, 4>{kx, k, 0, 0}, po + r * D, static_cast<scalar_t*>(nullptr));
    });
  });
}

}  // namespace

at::Tensor normalize_rows_backward(const at::Tensor& gy, const at::Tensor& x_, double eps) {
  const auto x = x_.contiguous(), g = gy.to(x.scalar_type()).contiguous();
  auto gx = at::empty_like(x);
  normalize_backward_rows(g, x, eps, /*prescaled=*/false, gx);
  return gx;
}

void normalize_rows_backward_(at::Tensor& g, const at::Tensor& x, double eps, bool prescaled) {
  TORCH_CHECK(g.is_contiguous() && g.scalar_type() == x.scalar_type() && g.sizes() == x.sizes(),
              "normalize_rows_backward_: g must be contiguous, of x's shape and dtype");
  normalize_backward_rows(g, x.contiguous(), eps, prescaled, g);
}

namespace {

// Half-precision inputs run in float32: their normalized rows, rounded to the half dtype
// for the product, made a small cosine a cancellation of rounded terms (0.29% off at a
// cosine of 0.0115 from float16 rows: test_fuzz_cosine), and CPU half products are no faster.
at::Tensor in_acc(const at::Tensor& x) {
  return x.to(at::toOpMathType(x.scalar_type())).contiguous();
}

// out = a_hat b_hat^T (a_hat, b_hat: the normalised rows) with one BLAS product: normalising
// the N + M rows first costs (N + M) D, scaling the N x M output would cost N M.
at::Tensor pairwise_cosine_similarity_cpu(const at::Tensor& a, const at::Tensor& b, double eps) {
  check_pairwise_cosine_similarity("pykernels::pairwise_cosine_similarity", a, b, eps, at::kCPU);
  const auto a_hat = normalize_rows(in_acc(a), eps), b_hat = normalize_rows(in_acc(b), eps);
  auto out = at::empty({a.size(0), a.size(1), b.size(1)}, a_hat.options());
  at::bmm_out(out, a_hat, b_hat.transpose(1, 2));
  return out.to(a.scalar_type());
}

// out = a_hat b_hat^T: grad a_hat = G b_hat, grad b_hat = G^T a_hat, then through each
// row's normalisation.
std::tuple<at::Tensor, at::Tensor> pairwise_cosine_similarity_backward_cpu(
    const at::Tensor& grad, const at::Tensor& a_, const at::Tensor& b_, double eps,
    GradMask output_mask) {
  check_pairwise_cosine_similarity_backward("pykernels::pairwise_cosine_similarity_backward",
                                            grad, a_, b_, eps, at::kCPU);
  const auto a = in_acc(a_), b = in_acc(b_);
  const auto g = grad.to(a.scalar_type());
  at::Tensor ga = at::empty({0}, a_.options()), gb = at::empty({0}, b_.options());
  if (output_mask[0]) {
    const auto ga_hat = at::bmm(g, normalize_rows(b, eps));
    ga = normalize_rows_backward(ga_hat, a, eps).to(a_.scalar_type());
  }
  if (output_mask[1]) {
    const auto gb_hat = at::bmm(g.transpose(1, 2), normalize_rows(a, eps));
    gb = normalize_rows_backward(gb_hat, b, eps).to(b_.scalar_type());
  }
  return {ga, gb};
}

}  // namespace
}  // namespace cpu
}  // namespace pykernels

TORCH_LIBRARY_IMPL(pykernels, CPU, m) {
  using namespace pykernels::cpu;
  m.impl("cosine_similarity", &cosine_similarity_cpu);
  m.impl("cosine_similarity_backward", &cosine_similarity_backward_cpu);
  m.impl("feature_distillation_loss", &feature_distillation_loss_cpu);
  m.impl("feature_distillation_loss_backward", &feature_distillation_loss_backward_cpu);
  m.impl("pairwise_cosine_similarity", &pairwise_cosine_similarity_cpu);
  m.impl("pairwise_cosine_similarity_backward", &pairwise_cosine_similarity_backward_cpu);
}
