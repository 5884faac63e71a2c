// CUDA kernels of the cosine family: cosine similarity, feature_distillation_loss (a row-wise
// distance, hence here), pairwise cosine similarity and row normalisation. One warp per row
// (grid-stride over rows), 16-byte packed loads when the rows allow it, warp-shuffle
// reductions in the accumulation type; a row is reduced by one warp in a fixed order
// (deterministic). Row offsets are int64. Passes (__device__ functions):
//   row_stats      x1 . x2, |x1|^2, |x2|^2, |x1 - x2|^2 of a row
//   write_linear   o1 = k11 x1 + k12 x2, o2 = k21 x1 + k22 x2 (every backward has this form)
// Pairwise similarity normalises rows with these kernels and multiplies with cuBLAS
// (at::matmul), which honours torch.backends.cuda.matmul.allow_tf32.
#include <torch/library.h>

#include "common/cosine_args.h"
#include "common/cuda_utils.cuh"
#include "common/normalize.h"

namespace pykernels {
namespace cuda {
namespace {

constexpr int kRowsPerBlock = 8;  // warps per block
constexpr int kThreads = kRowsPerBlock * kWarp;
enum Mode { kCos = 0, kOneMinusCos = 1, kSqDist = 2 };

// f(a, b) for every element of the row this lane owns, a and b in the accumulation type.
template <typename scalar_t, bool kPacked, typename F>
__device__ __forceinline__ void lane_read2(const scalar_t* x1, const scalar_t* x2, int64_t D,
                                           int lane, F f) {
  using acc = acc_t<scalar_t>;
  if constexpr (kPacked) {
    using P = Pack<scalar_t>;
    for (int64_t i = int64_t(lane) * P::kSize; i < D; i += kWarp * P::kSize) {
      const P p1 = *reinterpret_cast<const P*>(x1 + i);
      const P p2 = *reinterpret_cast<const P*>(x2 + i);
#pragma unroll
      for (int k = 0; k < P::kSize; ++k) f(static_cast<acc>(p1.v[k]), static_cast<acc>(p2.v[k]));
    }
  } else {
    for (int64_t i = lane; i < D; i += kWarp) f(static_cast<acc>(x1[i]), static_cast<acc>(x2[i]));
  }
}

// Pass write_linear: o1 = k11 x1 + k12 x2 and o2 = k21 x1 + k22 x2 over the row; a null
// output is skipped (its gradient was not asked for).
template <typename scalar_t, bool kPacked, typename acc = acc_t<scalar_t>>
__device__ __forceinline__ void write_linear(const scalar_t* x1, const scalar_t* x2, int64_t D,
                                             int lane, acc k11, acc k12, acc k21, acc k22,
                                             scalar_t* o1, scalar_t* o2) {
  if constexpr (kPacked) {
    using P = Pack<scalar_t>;
    for (int64_t i = int64_t(lane) * P::kSize; i < D; i += kWarp * P::kSize) {
      const P p1 = *reinterpret_cast<const P*>(x1 + i);
      const P p2 = *reinterpret_cast<const P*>(x2 + i);
      P q1, q2;
#pragma unroll
      for (int k = 0; k < P::kSize; ++k) {
        const acc a = static_cast<acc>(p1.v[k]), b = static_cast<acc>(p2.v[k]);
        q1.v[k] = static_cast<scalar_t>(k11 * a + k12 * b);
        q2.v[k] = static_cast<scalar_t>(k21 * a + k22 * b);
      }
      if (o1 != nullptr) *reinterpret_cast<P*>(o1 + i) = q1;
      if (o2 != nullptr) *reinterpret_cast<P*>(o2 + i) = q2;
    }
  } else {
    for (int64_t i = lane; i < D; i += kWarp) {
      const acc a = static_cast<acc>(x1[i]), b = static_cast<acc>(x2[i]);
      if (o1 != nullptr) o1[i] = static_cast<scalar_t>(k11 * a + k12 * b);
      if (o2 != nullptr) o2[i] = static_cast<scalar_t>(k21 * a + k22 * b);
    }
  }
}

// Pass row_stats: x1 . x2, |x1|^2, |x2|^2, |x1 - x2|^2 of a row, summed over the warp.
template <typename scalar_t, bool kPacked, typename acc = acc_t<scalar_t>>
__device__ __forceinline__ void row_stats(const scalar_t* x1, const scalar_t* x2, int64_t D,
                                          int lane, acc& dot, acc& s1, acc& s2, acc& sd) {
  dot = s1 = s2 = sd = acc(0);
  lane_read2<scalar_t, kPacked>(x1, x2, D, lane, [&](acc a, acc b) {
    dot += a * b;
    s1 += a * a;
    s2 += b * b;
    sd += (a - b) * (a - b);
  });
  dot = warp_sum(dot);
  s1 = warp_sum(s1);
  s2 = warp_sum(s2);
  sd = warp_sum(sd);
}

#define PK_FOR_EACH_ROW(rows)                                                             \
  const int lane = threadIdx.x % kWarp;                                                   \
  for (int64_t r = int64_t(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp; r < (rows); \
       r += int64_t(gridDim.x) * kRowsPerBlock)

template <typename scalar_t, typename out_t, bool kPacked>
__global__ void rowwise_fwd_kernel(const scalar_t* __restrict__ x1, const scalar_t* __restrict__ x2,
                                   out_t* __restrict__ out, int64_t rows, int64_t D,
                                   acc_t<scalar_t> eps, int mode) {
  using acc = acc_t<scalar_t>;
  PK_FOR_EACH_ROW(rows) {
    acc dot, s1, s2, sd;
    row_stats<scalar_t, kPacked>(x1 + r * D, x2 + r * D, D, lane, dot, s1, s2, sd);
    if (lane == 0) {
      const acc cos = dot / (max(sqrt(s1), eps) * max(sqrt(s2), eps));
      out[r] = static_cast<out_t>(mode == kSqDist ? sd : mode == kOneMinusCos ? acc(1) - cos : cos);
    }
  }
}

template <typename scalar_t, bool kPacked>
__global__ void rowwise_bwd_kernel(const acc_t<scalar_t>* __restrict__ grad,
                                   const scalar_t* __restrict__ x1, const scalar_t* __restrict__ x2,
                                   scalar_t* g1, scalar_t* g2,  // null: not asked for
                                   int64_t rows, int64_t D, acc_t<scalar_t> eps, int mode) {
  using acc = acc_t<scalar_t>;
  PK_FOR_EACH_ROW(rows) {
    const scalar_t *a = x1 + r * D, *b = x2 + r * D;
    acc g = grad[r], k11, k12, k21, k22;
    if (mode == kSqDist) {  // d|x1 - x2|^2 = 2 (x1 - x2) (dx1 - dx2)
      k11 = k22 = 2 * g;
      k12 = k21 = -2 * g;
    } else {  // dc/dx1 = x2 / (a b) - [n1 > eps] c x1 / a^2
      if (mode == kOneMinusCos) g = -g;
      acc dot, s1, s2, sd;
      row_stats<scalar_t, kPacked>(a, b, D, lane, dot, s1, s2, sd);
      const acc n1 = sqrt(s1), n2 = sqrt(s2), ca = max(n1, eps), cb = max(n2, eps);
      const acc c = dot / (ca * cb);
      k12 = k21 = g / (ca * cb);
      k11 = n1 > eps ? -g * c / (ca * ca) : acc(0);
      k22 = n2 > eps ? -g * c / (cb * cb) : acc(0);
    }
    write_linear<scalar_t, kPacked>(a, b, D, lane, k11, k12, k21, k22,
                                    g1 != nullptr ? g1 + r * D : nullptr,
                                    g2 != nullptr ? g2 + r * D : nullptr);
  }
}

// y = x / max(|x|, eps) per row.
template <typename scalar_t, bool kPacked>
__global__ void normalize_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ y,
                                 int64_t rows, int64_t D, acc_t<scalar_t> eps) {
  using acc = acc_t<scalar_t>;
  PK_FOR_EACH_ROW(rows) {
    acc dot, s1, s2, sd;
    row_stats<scalar_t, kPacked>(x + r * D, x + r * D, D, lane, dot, s1, s2, sd);
    const acc inv = acc(1) / max(sqrt(s1), eps);
    write_linear<scalar_t, kPacked>(x + r * D, x + r * D, D, lane, inv, acc(0), acc(0), acc(0),
                                    y + r * D, nullptr);
  }
}

// gx = gy / a - [n > eps] x (x . gy) / (n^2 a), a = max(n, eps): the gradient of normalize.
template <typename scalar_t, bool kPacked>
__global__ void normalize_bwd_kernel(const scalar_t* __restrict__ gy,
                                     const scalar_t* __restrict__ x, scalar_t* __restrict__ gx,
                                     int64_t rows, int64_t D, acc_t<scalar_t> eps) {
  using acc = acc_t<scalar_t>;
  PK_FOR_EACH_ROW(rows) {
    acc xg, xx, gg, sd;
    row_stats<scalar_t, kPacked>(x + r * D, gy + r * D, D, lane, xg, xx, gg, sd);
    const acc n = sqrt(xx), a = max(n, eps);
    const acc kx = n > eps ? -xg / (n * n * a) : acc(0);
    write_linear<scalar_t, kPacked>(x + r * D, gy + r * D, D, lane, kx, acc(1) / a, acc(0), acc(0),
                                    gx + r * D, nullptr);
  }
}

// Launches kernel<scalar_t, packed> for the row-wise ops, choosing packed loads when
// every row pointer is 16-byte aligned.
template <typename scalar_t, typename Launch>
void launch_rows(int64_t rows, int64_t D, std::initializer_list<const void*> ptrs, Launch launch) {
  if (rows == 0) return;
  bool packed = true;
  for (const void* p : ptrs) packed = packed && packable<scalar_t>(p, D);
  const dim3 grid(row_blocks(rows, kRowsPerBlock)), block(kThreads);
  auto stream = at::cuda::getCurrentCUDAStream();
  if (packed) {
    launch(std::true_type{}, grid, block, stream);
  } else {
    launch(std::false_type{}, grid, block, stream);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor rowwise_forward(const at::Tensor& x1_, const at::Tensor& x2_, double eps, int mode) {
  const auto x1 = x1_.contiguous(), x2 = x2_.contiguous();
  const auto out_type = mode == kCos ? x1.scalar_type() : at::toOpMathType(x1.scalar_type());
  auto out = at::empty(x1.sizes().slice(0, x1.dim() - 1), x1.options().dtype(out_type));
  const int64_t rows = out.numel(), D = x1.size(-1);
  PK_DISPATCH_FLOATING(x1.scalar_type(), "rowwise_forward_cuda", [&] {
    using acc = acc_t<scalar_t>;
    const scalar_t *p1 = x1.const_data_ptr<scalar_t>(), *p2 = x2.const_data_ptr<scalar_t>();
    launch_rows<scalar_t>(
        rows, D, {p1, p2}, [&](auto packed, dim3 grid, dim3 block, cudaStream_t s) {
          if (mode == kCos) {
            rowwise_fwd_kernel<scalar_t, scalar_t, decltype(packed)::value>
                <<<grid, block, 0, s>>>(p1, p2, out.data_ptr<scalar_t>(), rows, D, acc(eps), mode);
          } else {
            rowwise_fwd_kernel<scalar_t, acc, decltype(packed)::value>
                <<<grid, block, 0, s>>>(p1, p2, out.data_ptr<acc>(), rows, D, acc(eps), mode);
          }
        });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> rowwise_backward(const at::Tensor& grad_, const at::Tensor& x1_,
                                                    const at::Tensor& x2_, double eps, int mode,
                                                    GradMask mask) {
  const auto x1 = x1_.contiguous(), x2 = x2_.contiguous();
  auto g1 = mask[0] ? at::empty_like(x1) : at::empty({0}, x1.options());
  auto g2 = mask[1] ? at::empty_like(x2) : at::empty({0}, x2.options());
  const int64_t D = x1.size(-1), rows = D == 0 ? 0 : x1.numel() / D;
  if (rows == 0) return {g1.zero_(), g2.zero_()};
  const auto grad = grad_.to(at::toOpMathType(x1.scalar_type())).contiguous();
  PK_DISPATCH_FLOATING(x1.scalar_type(), "rowwise_backward_cuda", [&] {
    using acc = acc_t<scalar_t>;
    const scalar_t *p1 = x1.const_data_ptr<scalar_t>(), *p2 = x2.const_data_ptr<scalar_t>();
    scalar_t* o1 = mask[0] ? g1.data_ptr<scalar_t>() : nullptr;
    scalar_t* o2 = mask[1] ? g2.data_ptr<scalar_t>() : nullptr;
    // a skipped output does not constrain the packed path
    launch_rows<scalar_t>(rows, D, {p1, p2, o1 ? o1 : p1, o2 ? o2 : p1},
                          [&](auto packed, dim3 grid, dim3 block, cudaStream_t s) {
                            rowwise_bwd_kernel<scalar_t, decltype(packed)::value>
                                <<<grid, block, 0, s>>>(grad.const_data_ptr<acc>(), p1, p2, o1, o2,
                                                        rows, D, acc(eps), mode);
                          });
  });
  return {g1, g2};
}

}  // namespace

// Declared in common/normalize.h.
at::Tensor normalize_rows(const at::Tensor& x_, double eps) {
  const auto x = x_.contiguous();
  auto y = at::empty_like(x);
  const int64_t D = x.size(-1), rows = D == 0 ? 0 : x.numel() / D;
  PK_DISPATCH_FLOATING(x.scalar_type(), "normalize_rows_cuda", [&] {
    const scalar_t* px = x.const_data_ptr<scalar_t>();
    scalar_t* py = y.data_ptr<scalar_t>();
    launch_rows<scalar_t>(rows, D, {px, py},
                          [&](auto packed, dim3 grid, dim3 block, cudaStream_t s) {
                            normalize_kernel<scalar_t, decltype(packed)::value>
                                <<<grid, block, 0, s>>>(px, py, rows, D, acc_t<scalar_t>(eps));
                          });
  });
  return y;
}

at::Tensor normalize_rows_backward(const at::Tensor& gy_, const at::Tensor& x_, double eps) {
  const auto x = x_.contiguous(), gy = gy_.contiguous();
  auto gx = at::empty_like(x);
  const int64_t D = x.size(-1), rows = D == 0 ? 0 : x.numel() / D;
  PK_DISPATCH_FLOATING(x.scalar_type(), "normalize_rows_backward_cuda", [&] {
    const scalar_t *px = x.const_data_ptr<scalar_t>(), *pg = gy.const_data_ptr<scalar_t>();
    scalar_t* po = gx.data_ptr<scalar_t>();
    launch_rows<scalar_t>(rows, D, {px, pg, po},
                          [&](auto packed, dim3 grid, dim3 block, cudaStream_t s) {
                            normalize_bwd_kernel<scalar_t, decltype(packed)::value>
                                <<<grid, block, 0, s>>>(pg, px, po, rows, D, acc_t<scalar_t>(eps));
                          });
  });
  return gx;
}

namespace {

// ----------------------------------------------------------------------------- ops
at::Tensor cosine_similarity_cuda(const at::Tensor& x1, const at::Tensor& x2, double eps) {
  check_cosine_similarity("pykernels::cosine_similarity", x1, x2, eps, at::kCUDA);
  const c10::cuda::CUDAGuard guard(x1.device());
  return rowwise_forward(x1, x2, eps, kCos);
}

std::tuple<at::Tensor, at::Tensor> cosine_similarity_backward_cuda(const at::Tensor& grad,
                                                                   const at::Tensor& x1,
                                                                   const at::Tensor& x2, double eps,
                                                                   GradMask output_mask) {
  check_cosine_similarity_backward("pykernels::cosine_similarity_backward", grad, x1, x2, eps,
                                   at::kCUDA);
  const c10::cuda::CUDAGuard guard(x1.device());
  return rowwise_backward(grad, x1, x2, eps, kCos, output_mask);
}

int feature_mode(FeatureKind kind) { return kind == FeatureKind::kMse ? kSqDist : kOneMinusCos; }

at::Tensor feature_distillation_loss_cuda(const at::Tensor& student, const at::Tensor& teacher,
                                          c10::string_view kind, double eps) {
  const FeatureKind k = check_feature_distillation_loss("pykernels::feature_distillation_loss",
                                                        student, teacher, kind, eps, at::kCUDA);
  const c10::cuda::CUDAGuard guard(student.device());
  return rowwise_forward(student, teacher, eps, feature_mode(k));
}

std::tuple<at::Tensor, at::Tensor> feature_distillation_loss_backward_cuda(
    const at::Tensor& grad, const at::Tensor& student, const at::Tensor& teacher,
    c10::string_view kind, double eps, GradMask output_mask) {
  const FeatureKind k =
      check_feature_distillation_loss_backward("pykernels::feature_distillation_loss_backward",
                                               grad, student, teacher, kind, eps, at::kCUDA);
  const c10::cuda::CUDAGuard guard(student.device());
  return rowwise_backward(grad, student, teacher, eps, feature_mode(k), output_mask);
}

// Normalise the N + M rows (one read, one write of the inputs), then one cuBLAS matmul on
// tensor cores: cheaper than scaling the N x M output when N M > (N + M) D.
at::Tensor pairwise_cosine_similarity_cuda(const at::Tensor& a, const at::Tensor& b, double eps) {
  check_pairwise_cosine_similarity("pykernels::pairwise_cosine_similarity", a, b, eps, at::kCUDA);
  const c10::cuda::CUDAGuard guard(a.device());
  return at::matmul(normalize_rows(a, eps), normalize_rows(b, eps).transpose(1, 2));
}

// out = a_hat b_hat^T: grad a_hat = G b_hat, grad b_hat = G^T a_hat, then through each
// row's normalisation.
std::tuple<at::Tensor, at::Tensor> pairwise_cosine_similarity_backward_cuda(const at::Tensor& grad,
                                                                            const at::Tensor& a,
                                                                            const at::Tensor& b,
                                                                            double eps,
                                                                            GradMask output_mask) {
  check_pairwise_cosine_similarity_backward("pykernels::pairwise_cosine_similarity_backward", grad,
                                            a, b, eps, at::kCUDA);
  const c10::cuda::CUDAGuard guard(a.device());
  const auto g = grad.to(a.scalar_type());
  at::Tensor ga = at::empty({0}, a.options()), gb = at::empty({0}, b.options());
  if (output_mask[0]) ga = normalize_rows_backward(at::matmul(g, normalize_rows(b, eps)), a, eps);
  if (output_mask[1]) {
    gb = normalize_rows_backward(at::matmul(g.transpose(1, 2), normalize_rows(a, eps)), b, eps);
  }
  return {ga, gb};
}

}  // namespace
}  // namespace cuda
}  // namespace pykernels

TORCH_LIBRARY_IMPL(pykernels, CUDA, m) {
  using namespace pykernels::cuda;
  m.impl("cosine_similarity", &cosine_similarity_cuda);
  m.impl("cosine_similarity_backward", &cosine_similarity_backward_cuda);
  m.impl("feature_distillation_loss", &feature_distillation_loss_cuda);
  m.impl("feature_distillation_loss_backward", &feature_distillation_loss_backward_cuda);
  m.impl("pairwise_cosine_similarity", &pairwise_cosine_similarity_cuda);
  m.impl("pairwise_cosine_similarity_backward", &pairwise_cosine_similarity_backward_cuda);
}
