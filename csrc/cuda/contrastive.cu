// CUDA kernels of the contrastive family: the fused InfoNCE / CLIP loss.
//
// Same scheme as the CPU kernel: the [N, M] logits are never stored. A host loop over
// tiles of R rows (no host sync) fills an R x M float32 tile with cuBLAS (at::mm; half
// inputs run on tensor cores with a float32 output through mm's out_dtype), and these
// kernels read it:
//   forward:  row_stats_kernel (block per row: log-sum-exp and positive logit) and
//             col_stats_kernel (thread per column: tile max and sum of exp merged into
//             running per-column stats); finalize_kernel turns the stats into losses;
//   backward: grad_kernel overwrites the recomputed tile with scale * dLoss/dL (rounded
//             to bf16 for bf16 inputs, as the flash-attention backward does; float32
//             for float16, whose range would flush its small entries)
//             and per-row shares of d(scale); then dI = G T and dT += G^T I (cuBLAS).
// Every sum has a fixed order (block reductions, per-row partials summed by at::sum):
// deterministic. Labels are not range-checked on the device (that needs a host sync):
// an out-of-range label is never used as an address and makes its losses NaN.
#include <torch/library.h>

#include "common/contrastive_args.h"
#include "common/cuda_utils.cuh"
#include "common/normalize.h"

namespace pykernels {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr double kNormalizeEps = 1e-12;
// R x M tile elements: a float32 tile plus its half copy stay under ~200 MB.
constexpr int64_t kTileElems = int64_t(1) << 25;

int64_t tile_rows(int64_t N, int64_t M) {
  const int64_t rows = std::max<int64_t>(kTileElems / std::max<int64_t>(M, 1), 64);
  return std::max<int64_t>(1, std::min<int64_t>(rows, std::max<int64_t>(N, 1)));
}

// L = scale * x rounded once. nvcc would fuse the product into a following subtraction (one
// FMA, the product unrounded): exp(L - lse) would then see another L than the max and the
// log-sum-exp were taken over, and a confident row's p - 1 would carry the difference.
__device__ __forceinline__ float logit(float scale, float x) { return __fmul_rn(scale, x); }
__device__ __forceinline__ double logit(double scale, double x) { return __dmul_rn(scale, x); }

// Block r: row r0 + r of the logits, from tile row r (M raw dot products): m = max_j L,
// row_lse = m + log sum_j exp(L - m), pos = L[y], loss = (m - pos) + log sum.
template <typename acc>
__global__ void row_stats_kernel(const acc* __restrict__ S, int64_t M, int64_t r0,
                                 const int64_t* __restrict__ y, const acc* __restrict__ scale_p,
                                 double* __restrict__ row_lse, acc* __restrict__ pos,
                                 acc* __restrict__ loss) {
  __shared__ acc smem[kThreads / kWarp];
  const int64_t r = blockIdx.x, i = r0 + r;
  const acc* s = S + r * M;
  const acc scale = *scale_p;
  acc m = -INFINITY;
  for (int64_t j = threadIdx.x; j < M; j += blockDim.x) m = max(m, logit(scale, s[j]));
  m = block_reduce<true>(m, smem);
  const acc shift = m == acc(-INFINITY) ? acc(0) : m;  // NaNs reach the sum below
  acc sum = 0;
  for (int64_t j = threadIdx.x; j < M; j += blockDim.x) sum += exp(logit(scale, s[j]) - shift);
  sum = block_reduce<false>(sum, smem);
  if (threadIdx.x == 0) {
    const int64_t yi = y[i];
    const acc p = (yi >= 0 && yi < M) ? logit(scale, s[yi]) : acc(NAN);
    row_lse[i] = double(shift) + double(log(sum));  // float64: see split_lse
    pos[i] = p;
    // (max - positive) + log(sum), not lse - positive: keeps a small loss precise under
    // large logits (lse rounded to float32 carries |lse| * eps)
    loss[i] = (shift - p) + log(sum);
  }
}

// Thread per column j: this tile's max and sum of exp, merged into the running stats:
//   m' = max(m, m_t),  s' = s exp(m - m') + s_t exp(m_t - m').
template <typename acc>
__global__ void col_stats_kernel(const acc* __restrict__ S, int64_t rows, int64_t M,
                                 const acc* __restrict__ scale_p, acc* __restrict__ cm,
                                 acc* __restrict__ cs, bool first) {
  const acc scale = *scale_p;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; j < M; j += stride) {
    acc m = -INFINITY, s = 0;
    for (int64_t r = 0; r < rows; ++r) m = max(m, logit(scale, S[r * M + j]));
    const acc shift = m == acc(-INFINITY) ? acc(0) : m;
    for (int64_t r = 0; r < rows; ++r) s += exp(logit(scale, S[r * M + j]) - shift);
    if (first) {
      cm[j] = m;
      cs[j] = s;
    } else {
      const acc om = cm[j], nm = max(om, m);
      const acc safe = nm == acc(-INFINITY) ? acc(0) : nm;
      cs[j] = cs[j] * exp(om - safe) + s * exp(shift - safe);
      cm[j] = nm;
    }
  }
}

// col_lse[j] = cm + log(cs); loss_t2i[i] = (cm - pos[i]) + log(cs) at j = y[i] (NaN: label
// out of range).
template <typename acc>
__global__ void finalize_kernel(int64_t N, int64_t M, int64_t K, const acc* __restrict__ cm,
                                const acc* __restrict__ cs, const int64_t* __restrict__ y,
                                const acc* __restrict__ pos, double* __restrict__ col_lse,
                                acc* __restrict__ loss_t2i) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; k < K; k += stride) {
    if (k < M) col_lse[k] = double(cm[k]) + double(log(cs[k]));
    if (k < N) {
      const int64_t yi = y[k];
      loss_t2i[k] = (yi >= 0 && yi < M) ? (cm[yi] - pos[k]) + log(cs[yi]) : acc(NAN);
    }
  }
}

// c[j] = sum of w[i] over the i with y[i] == j, in row order.
template <typename acc>
__global__ void column_weight_kernel(const int64_t* __restrict__ y, const acc* __restrict__ w,
                                     int64_t N, int64_t M, acc* __restrict__ c) {
  __shared__ int64_t ys[kThreads];
  __shared__ acc ws[kThreads];
  const int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  acc sum = 0;
  for (int64_t n0 = 0; n0 < N; n0 += kThreads) {
    const int64_t n = n0 + threadIdx.x;
    __syncthreads();
    ys[threadIdx.x] = n < N ? y[n] : int64_t(-1);
    ws[threadIdx.x] = n < N ? w[n] : acc(0);
    __syncthreads();
    const int count = N - n0 < kThreads ? int(N - n0) : kThreads;
    for (int k = 0; k < count; ++k) sum += ys[k] == j ? ws[k] : acc(0);
  }
  if (j < M) c[j] = sum;
}

// Block r: tile row r becomes G = scale * dLoss/dL,
//   dL_j = a exp(L_j - rl) + c_j exp(L_j - cl_j) - [j == y] (a + b),
// each lse given as hi + lo (split_lse), written to G (which may alias S);
// dscale_rows[i] = sum_j dL_j * raw_j.
template <typename acc, typename out_t>
__global__ void grad_kernel(const acc* S, out_t* G, int64_t M, int64_t r0,
                            const int64_t* __restrict__ y, const acc* __restrict__ scale_p,
                            const acc* __restrict__ ga, const acc* __restrict__ gb,
                            const acc* __restrict__ c, const acc* __restrict__ row_hi,
                            const acc* __restrict__ row_lo, const acc* __restrict__ col_hi,
                            const acc* __restrict__ col_lo, acc* __restrict__ dscale_rows) {
  __shared__ acc smem[kThreads / kWarp];
  const int64_t r = blockIdx.x, i = r0 + r;
  const acc scale = *scale_p, a = ga[i], b = gb != nullptr ? gb[i] : acc(0);
  const acc rl_hi = row_hi[i], rl_lo = row_lo[i];
  const int64_t yi = y[i];
  acc part = 0;
  for (int64_t j = threadIdx.x; j < M; j += blockDim.x) {
    const acc x = S[r * M + j], L = logit(scale, x);
    acc d = a * exp((L - rl_hi) - rl_lo);
    if (gb != nullptr) d += c[j] * exp((L - col_hi[j]) - col_lo[j]);
    if (j == yi) d -= a + b;
    part += d * x;
    G[r * M + j] = static_cast<out_t>(d * scale);
  }
  part = block_reduce<false>(part, smem);
  if (threadIdx.x == 0) dscale_rows[i] = part;
}

at::Tensor prepare(const at::Tensor& x, bool normalize) {
  const auto c = x.contiguous();
  return normalize ? normalize_rows(c, kNormalizeEps) : c;
}

int blocks_for(int64_t n) {
  const int64_t need = (n + kThreads - 1) / kThreads;
  return int(std::max<int64_t>(1, std::min<int64_t>(need, int64_t(1) << 20)));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> info_nce_loss_cuda(const at::Tensor& image_features,
                                                                  const at::Tensor& text_features,
                                                                  const at::Tensor& logit_scale,
                                                                  const at::Tensor& labels_,
                                                                  bool symmetric, bool normalize) {
  check_info_nce_loss("pykernels::info_nce_loss", image_features, text_features, logit_scale,
                      labels_, at::kCUDA);
  const c10::cuda::CUDAGuard guard(image_features.device());
  const auto labels = labels_.contiguous();
  const int64_t N = image_features.size(0), M = text_features.size(0), R = tile_rows(N, M);
  const auto acc_type = at::toOpMathType(image_features.scalar_type());
  const auto opts = image_features.options().dtype(acc_type);
  auto loss = at::empty({symmetric ? 2 : 1, N}, opts);
  auto row_lse = at::empty({N}, opts.dtype(at::kDouble));
  auto col_lse = at::empty({symmetric ? M : 0}, opts.dtype(at::kDouble));
  auto pos = at::empty({N}, opts);
  const auto I = prepare(image_features, normalize), T = prepare(text_features, normalize);
  const auto scale = logit_scale.to(acc_type).reshape({1});
  auto tile = at::empty({R, M}, opts);
  auto cm = at::full({symmetric ? M : 0}, -INFINITY, opts);
  auto cs = at::zeros({symmetric ? M : 0}, opts);
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(acc_type, "info_nce_loss_cuda", [&] {
    using acc = scalar_t;
    for (int64_t r0 = 0; r0 < N; r0 += R) {
      const int64_t rows = std::min(R, N - r0);
      auto S = tile.narrow(0, 0, rows);
      mm_acc_out(S, I.narrow(0, r0, rows), T.t());
      row_stats_kernel<acc><<<unsigned(rows), kThreads, 0, stream>>>(
          S.const_data_ptr<acc>(), M, r0, labels.const_data_ptr<int64_t>(),
          scale.const_data_ptr<acc>(), row_lse.data_ptr<double>(), pos.data_ptr<acc>(),
          loss.data_ptr<acc>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      if (symmetric && M > 0) {
        col_stats_kernel<acc><<<blocks_for(M), kThreads, 0, stream>>>(
            S.const_data_ptr<acc>(), rows, M, scale.const_data_ptr<acc>(), cm.data_ptr<acc>(),
            cs.data_ptr<acc>(), r0 == 0);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    }
    if (symmetric && std::max(N, M) > 0) {
      finalize_kernel<acc><<<blocks_for(std::max(N, M)), kThreads, 0, stream>>>(
          N, M, std::max(N, M), cm.const_data_ptr<acc>(), cs.const_data_ptr<acc>(),
          labels.const_data_ptr<int64_t>(), pos.const_data_ptr<acc>(), col_lse.data_ptr<double>(),
          loss.data_ptr<acc>() + N);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {loss, row_lse, col_lse};
}

// What the backward's tile loop reads: the features (normalised when asked), the upstream
// weights a (image -> text) and b (text -> image, null when not symmetric), the column
// weights c, the split log-sum-exps, and labels.
struct BackwardInputs {
  at::Tensor I, T, scale, labels, grad, c, row_hi, row_lo, col_hi, col_lo;
  bool symmetric;
};

// G = scale * dLoss/dL of one recomputed tile into G (the tile itself, or its bf16 copy).
template <typename acc>
void grad_tile(const BackwardInputs& in, const at::Tensor& S, at::Tensor& G, int64_t r0,
               acc* dscale_rows, cudaStream_t stream) {
  const int64_t rows = S.size(0), M = S.size(1), N = in.I.size(0);
  const acc* ga = in.grad.const_data_ptr<acc>();
  auto launch = [&](auto* out) {
    grad_kernel<acc, std::remove_pointer_t<decltype(out)>><<<unsigned(rows), kThreads, 0, stream>>>(
        S.const_data_ptr<acc>(), out, M, r0, in.labels.const_data_ptr<int64_t>(),
        in.scale.const_data_ptr<acc>(), ga, in.symmetric ? ga + N : nullptr,
        in.symmetric ? in.c.const_data_ptr<acc>() : nullptr, in.row_hi.const_data_ptr<acc>(),
        in.row_lo.const_data_ptr<acc>(), in.symmetric ? in.col_hi.const_data_ptr<acc>() : nullptr,
        in.symmetric ? in.col_lo.const_data_ptr<acc>() : nullptr, dscale_rows);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  if (G.scalar_type() == at::kBFloat16) {
    launch(G.data_ptr<at::BFloat16>());
  } else {
    launch(G.data_ptr<acc>());  // G is S: overwritten in place
  }
}

// Per tile: recompute S, G = grad_tile, dI[tile] = G T, dT += G^T I[tile]. G is rounded to
// bf16 for bf16 inputs (tensor-core products, as the flash-attention backward does); float16
// would flush G's small entries (they scale like 1/N) to subnormals, so for float16 G stays
// float32 and so do the products.
template <typename acc>
void backward_tiles(const BackwardInputs& in, at::Tensor& dI, at::Tensor& dT_acc,
                    at::Tensor& dscale_rows) {
  const int64_t N = in.I.size(0), M = in.T.size(0), R = tile_rows(N, M);
  const auto dtype = in.I.scalar_type(), acc_type = dT_acc.scalar_type();
  const bool g_bf16 = dtype == at::kBFloat16, g_f32_from_half = dtype == at::kHalf;
  const auto Tg = g_f32_from_half ? in.T.to(acc_type) : in.T;  // operand of dI = G T
  auto tile = at::empty({R, M}, dT_acc.options());
  auto gtile = g_bf16 ? at::empty({R, M}, in.I.options()) : tile;
  const auto stream = at::cuda::getCurrentCUDAStream();
  for (int64_t r0 = 0; r0 < N; r0 += R) {
    const int64_t rows = std::min(R, N - r0);
    auto S = tile.narrow(0, 0, rows);
    auto G = gtile.narrow(0, 0, rows);
    const auto Ir = in.I.narrow(0, r0, rows);
    mm_acc_out(S, Ir, in.T.t());
    grad_tile<acc>(in, S, G, r0, dscale_rows.data_ptr<acc>(), stream);
    auto dIr = dI.narrow(0, r0, rows);
    if (G.scalar_type() == dI.scalar_type()) {
      at::mm_out(dIr, G, Tg);  // bf16: float32 accumulation, one rounding to bf16
    } else {
      dIr.copy_(at::mm(G, Tg));  // float16 inputs: float32 product, then rounded
    }
    if (g_bf16) {
      auto part = at::empty({M, in.T.size(1)}, dT_acc.options());
      mm_acc_out(part, G.t(), Ir);
      dT_acc.add_(part);
    } else {
      dT_acc.addmm_(G.t(), g_f32_from_half ? Ir.to(acc_type) : Ir);
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> info_nce_loss_backward_cuda(
    const at::Tensor& grad, const at::Tensor& image_features, const at::Tensor& text_features,
    const at::Tensor& logit_scale, const at::Tensor& labels, const at::Tensor& row_lse,
    const at::Tensor& col_lse, bool symmetric, bool normalize) {
  check_info_nce_loss_backward("pykernels::info_nce_loss_backward", grad, image_features,
                               text_features, logit_scale, labels, row_lse, col_lse, symmetric,
                               at::kCUDA);
  const c10::cuda::CUDAGuard guard(image_features.device());
  const int64_t N = image_features.size(0), M = text_features.size(0);
  const auto dtype = image_features.scalar_type(), acc_type = at::toOpMathType(dtype);
  const auto opts = image_features.options().dtype(acc_type);
  const auto row_split = split_lse(row_lse, acc_type), col_split = split_lse(col_lse, acc_type);
  const auto I0 = image_features.contiguous(), T0 = text_features.contiguous();
  BackwardInputs in{normalize ? normalize_rows(I0, kNormalizeEps) : I0,
                    normalize ? normalize_rows(T0, kNormalizeEps) : T0,
                    logit_scale.to(acc_type).reshape({1}),
                    labels.contiguous(),
                    grad.to(acc_type).contiguous(),
                    at::empty({symmetric ? M : 0}, opts),
                    row_split.first,
                    row_split.second,
                    col_split.first,
                    col_split.second,
                    symmetric};
  auto dI = at::empty_like(in.I);
  auto dT_acc = at::zeros({M, in.T.size(1)}, opts);
  auto dscale_rows = at::empty({N}, opts);
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(acc_type, "info_nce_loss_backward_cuda", [&] {
    using acc = scalar_t;
    if (symmetric && M > 0) {  // c[j] = the sum of b over the rows whose label is j
      column_weight_kernel<acc><<<unsigned((M + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
          in.labels.const_data_ptr<int64_t>(), in.grad.const_data_ptr<acc>() + N, N, M,
          in.c.data_ptr<acc>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    backward_tiles<acc>(in, dI, dT_acc, dscale_rows);
  });
  auto dT = dT_acc.to(dtype);
  if (normalize) {
    dI = normalize_rows_backward(dI, I0, kNormalizeEps);
    dT = normalize_rows_backward(dT, T0, kNormalizeEps);
  }
  auto dscale = dscale_rows.sum().to(logit_scale.scalar_type()).reshape(logit_scale.sizes());
  return {dI, dT, dscale};
}

}  // namespace
}  // namespace cuda
}  // namespace pykernels

TORCH_LIBRARY_IMPL(pykernels, CUDA, m) {
  using namespace pykernels::cuda;
  m.impl("info_nce_loss", &info_nce_loss_cuda);
  m.impl("info_nce_loss_backward", &info_nce_loss_backward_cuda);
}
