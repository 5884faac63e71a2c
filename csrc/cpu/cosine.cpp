// CPU ops of the cosine family: cosine similarity, feature_distillation_loss (a row-wise
// distance of two feature rows, hence here), pairwise cosine similarity, and the row
// normalisation the contrastive family shares (common/normalize.h). The row kernels are in
// cpu/cosine_kernels.h, built twice: here with the baseline flags (namespace generic) and in
// cosine_avx2.cpp for AVX2 + FMA (namespace avx2); kernels() picks one at run time.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <array>
#include <cmath>
#include <tuple>

#include "common/cosine_args.h"
#include "common/cpu_capability.h"
#include "common/cpu_vec.h"
#include "common/normalize.h"
#include "common/output_memory.h"

#define PK_COSINE_NS generic
#include "cpu/cosine_kernels.h"

namespace pykernels {
namespace cpu {

#ifdef PK_HAVE_AVX2_BUILD
namespace avx2 {  // cosine_avx2.cpp
void rowwise_forward(const at::Tensor&, const at::Tensor&, double, RowOp, at::Tensor&);
void rowwise_backward(const at::Tensor&, const at::Tensor&, const at::Tensor&, double, RowOp,
                      at::Tensor&, at::Tensor&);
void normalize(const at::Tensor&, double, at::Tensor&, at::Tensor&);
void normalize_backward(const at::Tensor&, const at::Tensor&, double, bool, at::Tensor&);
}  // namespace avx2
#endif

namespace {

// The kernels: the AVX2 + FMA build where the CPU has it, else the baseline build.
struct Kernels {
  void (*rowwise_forward)(const at::Tensor&, const at::Tensor&, double, RowOp, at::Tensor&);
  void (*rowwise_backward)(const at::Tensor&, const at::Tensor&, const at::Tensor&, double, RowOp,
                           at::Tensor&, at::Tensor&);
  void (*normalize)(const at::Tensor&, double, at::Tensor&, at::Tensor&);
  void (*normalize_backward)(const at::Tensor&, const at::Tensor&, double, bool, at::Tensor&);
};

const Kernels& kernels() {
#ifdef PK_HAVE_AVX2_BUILD
  if (use_avx2()) {
    static const Kernels k{&avx2::rowwise_forward, &avx2::rowwise_backward, &avx2::normalize,
                           &avx2::normalize_backward};
    return k;
  }
#endif
  static const Kernels k{&generic::rowwise_forward, &generic::rowwise_backward, &generic::normalize,
                         &generic::normalize_backward};
  return k;
}

// out [...] = op per row of x1, x2 [..., D]: x1's dtype for kCosine, else the accumulation dtype.
at::Tensor rowwise_forward(const at::Tensor& x1_, const at::Tensor& x2_, double eps, RowOp op) {
  const auto x1 = x1_.contiguous(), x2 = x2_.contiguous();
  const auto dtype = op == RowOp::kCosine ? x1.scalar_type() : at::toOpMathType(x1.scalar_type());
  auto out = at::empty(x1.sizes().slice(0, x1.dim() - 1), x1.options().dtype(dtype));
  if (out.numel() > 0) kernels().rowwise_forward(x1, x2, eps, op, out);
  return out;
}

// The gradients of a row-wise op: x's shape where output_mask asks for them, else empty.
std::tuple<at::Tensor, at::Tensor> rowwise_backward(const at::Tensor& grad, const at::Tensor& x1_,
                                                    const at::Tensor& x2_, double eps, RowOp op,
                                                    GradMask mask) {
  const auto x1 = x1_.contiguous(), x2 = x2_.contiguous();
  at::Tensor g1 = mask[0] ? empty_output_like(x1) : at::Tensor();
  at::Tensor g2 = mask[1] ? empty_output_like(x2) : at::Tensor();
  if (x1.numel() > 0) {
    const auto g = grad.to(at::toOpMathType(x1.scalar_type())).contiguous();
    kernels().rowwise_backward(g, x1, x2, eps, op, g1, g2);
  } else {
    for (auto* t : {&g1, &g2}) {
      if (t->defined()) t->zero_();
    }
  }
  return {mask[0] ? g1 : at::empty({0}, x1.options()), mask[1] ? g2 : at::empty({0}, x2.options())};
}

RowOp feature_op(FeatureKind kind) {
  return kind == FeatureKind::kMse ? RowOp::kSquaredDistance : RowOp::kOneMinusCosine;
}

at::Tensor cosine_similarity_cpu(const at::Tensor& x1, const at::Tensor& x2, double eps) {
  check_cosine_similarity("pykernels::cosine_similarity", x1, x2, eps, at::kCPU);
  return rowwise_forward(x1, x2, eps, RowOp::kCosine);
}

std::tuple<at::Tensor, at::Tensor> cosine_similarity_backward_cpu(const at::Tensor& grad,
                                                                  const at::Tensor& x1,
                                                                  const at::Tensor& x2, double eps,
                                                                  GradMask output_mask) {
  check_cosine_similarity_backward("pykernels::cosine_similarity_backward", grad, x1, x2, eps,
                                   at::kCPU);
  return rowwise_backward(grad, x1, x2, eps, RowOp::kCosine, output_mask);
}

// Per-row loss, accumulation dtype: |s - t|^2 ("mse") or 1 - cos(s, t) ("cosine").
at::Tensor feature_distillation_loss_cpu(const at::Tensor& student, const at::Tensor& teacher,
                                         c10::string_view kind, double eps) {
  const FeatureKind k = check_feature_distillation_loss("pykernels::feature_distillation_loss",
                                                        student, teacher, kind, eps, at::kCPU);
  return rowwise_forward(student, teacher, eps, feature_op(k));
}

std::tuple<at::Tensor, at::Tensor> feature_distillation_loss_backward_cpu(
    const at::Tensor& grad, const at::Tensor& student, const at::Tensor& teacher,
    c10::string_view kind, double eps, GradMask output_mask) {
  const FeatureKind k = check_feature_distillation_loss_backward(
      "pykernels::feature_distillation_loss_backward", grad, student, teacher, kind, eps, at::kCPU);
  return rowwise_backward(grad, student, teacher, eps, feature_op(k), output_mask);
}

}  // namespace

at::Tensor row_inverse_norms(const at::Tensor& x_, double eps) {
  const auto x = x_.contiguous();
  const auto acc_type = at::toOpMathType(x.scalar_type());
  auto inv = at::empty(x.sizes().slice(0, x.dim() - 1), x.options().dtype(acc_type));
  at::Tensor none;
  if (x.numel() > 0) {
    kernels().normalize(x, eps, inv, none);
  } else {
    inv.fill_(1.0 / eps);  // D == 0: norms 0, clamped to eps
  }
  return inv;
}

at::Tensor normalize_rows(const at::Tensor& x_, double eps) {
  const auto x = x_.contiguous();
  auto y = empty_output_like(x);
  at::Tensor none;
  if (x.numel() > 0) kernels().normalize(x, eps, none, y);
  return y;
}

at::Tensor normalize_rows_backward(const at::Tensor& gy, const at::Tensor& x_, double eps) {
  const auto x = x_.contiguous(), g = gy.to(x.scalar_type()).contiguous();
  auto gx = empty_output_like(x);
  if (x.numel() > 0) kernels().normalize_backward(g, x, eps, /*prescaled=*/false, gx);
  return gx;
}

void normalize_rows_backward_(at::Tensor& g, const at::Tensor& x, double eps, bool prescaled) {
  TORCH_CHECK(g.is_contiguous() && g.scalar_type() == x.scalar_type() && g.sizes() == x.sizes(),
              "normalize_rows_backward_: g must be contiguous, of x's shape and dtype");
  if (x.numel() > 0) kernels().normalize_backward(g, x.contiguous(), eps, prescaled, g);
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
std::tuple<at::Tensor, at::Tensor> pairwise_cosine_similarity_backward_cpu(const at::Tensor& grad,
                                                                           const at::Tensor& a_,
                                                                           const at::Tensor& b_,
                                                                           double eps,
                                                                           GradMask output_mask) {
  check_pairwise_cosine_similarity_backward("pykernels::pairwise_cosine_similarity_backward", grad,
                                            a_, b_, eps, at::kCPU);
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
