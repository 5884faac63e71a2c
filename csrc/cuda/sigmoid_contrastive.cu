// CUDA kernels of the SigLIP sigmoid contrastive loss.
//
// Same scheme as the CPU kernel and the InfoNCE CUDA kernels: the [N, M] logits are never
// stored. A host loop over tiles of R rows (no host sync) fills an R x M float32 tile with
// cuBLAS (mm_acc_out: half inputs on tensor cores with a float32 output), and these kernels
// read it, one block per tile row:
//   forward:  loss_rows_kernel: loss_i = sum_j softplus(t_ij), t = -z (scale x + bias);
//   backward: grad_tile_kernel overwrites the recomputed tile with G = g_i (-z) sigmoid(t)
//             and writes each row's sum of G (d logit_bias); then dI[tile] = G T and
//             dT += G^T I[tile] (cuBLAS, float32), and after the loop
//             d(logit_scale) = sum_i <dI_i, I_i> before dI and dT are scaled.
// Scale and bias are read on the device (no host sync). Every sum has a fixed order (block
// reductions, per-row partials summed by at::sum): deterministic.
#include <torch/library.h>

#include "common/cuda_utils.cuh"
#include "common/normalize.h"
#include "common/sigmoid_contrastive_args.h"

namespace pykernels {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr double kNormalizeEps = 1e-12;
constexpr int64_t kTileElems = int64_t(1) << 25;  // R x M float32 tile: 128 MB at most

int64_t sigmoid_tile_rows(int64_t N, int64_t M) {
  const int64_t rows = std::max<int64_t>(kTileElems / std::max<int64_t>(M, 1), 64);
  return std::max<int64_t>(1, std::min<int64_t>(rows, std::max<int64_t>(N, 1)));
}

// t = -z (scale x + bias) of row i, column j: the argument of the pair's softplus.
template <typename acc>
__device__ __forceinline__ acc signed_logit(acc x, acc scale, acc bias, bool positive) {
  const acc L = scale * x + bias;
  return positive ? -L : L;
}

// softplus(t) = max(t, 0) + log1p(exp(-|t|)): no overflow for any |t|.
__device__ __forceinline__ float softplus(float t) {
  return fmaxf(t, 0.f) + log1pf(__expf(-fabsf(t)));
}
__device__ __forceinline__ double softplus(double t) { return fmax(t, 0.0) + log1p(exp(-fabs(t))); }

// sigmoid(t) from e = exp(-|t|) <= 1: no overflow for any |t|.
template <typename acc>
__device__ __forceinline__ acc sigmoid(acc t) {
  const acc e = exp(-fabs(t));
  return t >= acc(0) ? acc(1) / (acc(1) + e) : e / (acc(1) + e);
}

// Block r: loss[r0 + r] = sum_j softplus(t[r, j]) over tile row r (M raw dot products).
template <typename acc>
__global__ void loss_rows_kernel(const acc* __restrict__ S, int64_t M, int64_t r0,
                                 const int64_t* __restrict__ ids_i,
                                 const int64_t* __restrict__ ids_t, const acc* __restrict__ scale,
                                 const acc* __restrict__ bias, acc* __restrict__ loss) {
  __shared__ acc smem[kThreads / kWarp];
  const int64_t r = blockIdx.x, id = ids_i[r0 + r];
  const acc s = scale[0], b = bias[0];
  const acc* row = S + r * M;
  acc part = 0;
  for (int64_t j = threadIdx.x; j < M; j += blockDim.x) {
    part += softplus(signed_logit(row[j], s, b, ids_t[j] == id));
  }
  part = block_reduce<false>(part, smem);
  if (threadIdx.x == 0) loss[r0 + r] = part;
}

// Block r: tile row r becomes G = grad (-z) sigmoid(t); dbias_rows[r0 + r] = sum_j G.
template <typename acc>
__global__ void grad_tile_kernel(acc* __restrict__ S, int64_t M, int64_t r0,
                                 const int64_t* __restrict__ ids_i,
                                 const int64_t* __restrict__ ids_t, const acc* __restrict__ scale,
                                 const acc* __restrict__ bias, const acc* __restrict__ grad,
                                 acc* __restrict__ dbias_rows) {
  __shared__ acc smem[kThreads / kWarp];
  const int64_t r = blockIdx.x, id = ids_i[r0 + r];
  const acc s = scale[0], b = bias[0], g = grad[r0 + r];
  acc* row = S + r * M;
  acc part = 0;
  for (int64_t j = threadIdx.x; j < M; j += blockDim.x) {
    const bool positive = ids_t[j] == id;
    const acc d = g * sigmoid(signed_logit(row[j], s, b, positive));
    row[j] = positive ? -d : d;
    part += row[j];
  }
  part = block_reduce<false>(part, smem);
  if (threadIdx.x == 0) dbias_rows[r0 + r] = part;
}

// The features in the accumulation dtype's products: normalised when asked, contiguous.
at::Tensor prepare(const at::Tensor& x, bool normalize) {
  const auto c = x.contiguous();
  return normalize ? normalize_rows(c, kNormalizeEps) : c;
}

at::Tensor sigmoid_contrastive_loss_cuda(const at::Tensor& image_features,
                                         const at::Tensor& text_features,
                                         const at::Tensor& logit_scale,
                                         const at::Tensor& logit_bias, const at::Tensor& image_ids_,
                                         const at::Tensor& text_ids_, bool normalize) {
  check_sigmoid_contrastive_loss("pykernels::sigmoid_contrastive_loss", image_features,
                                 text_features, logit_scale, logit_bias, image_ids_, text_ids_,
                                 at::kCUDA);
  const c10::cuda::CUDAGuard guard(image_features.device());
  const auto image_ids = image_ids_.contiguous(), text_ids = text_ids_.contiguous();
  const int64_t N = image_features.size(0), M = text_features.size(0);
  const int64_t R = sigmoid_tile_rows(N, M);
  const auto acc_type = at::toOpMathType(image_features.scalar_type());
  const auto opts = image_features.options().dtype(acc_type);
  auto loss = at::zeros({N}, opts);  // M == 0: no pairs, zero loss
  if (N == 0 || M == 0) return loss;
  const auto I = prepare(image_features, normalize), T = prepare(text_features, normalize);
  const auto scale = logit_scale.to(acc_type).reshape({1}),
             bias = logit_bias.to(acc_type).reshape({1});
  auto tile = at::empty({R, M}, opts);
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(acc_type, "sigmoid_contrastive_loss_cuda", [&] {
    for (int64_t r0 = 0; r0 < N; r0 += R) {
      const int64_t rows = std::min(R, N - r0);
      auto S = tile.narrow(0, 0, rows);
      mm_acc_out(S, I.narrow(0, r0, rows), T.t());
      loss_rows_kernel<scalar_t><<<unsigned(rows), kThreads, 0, stream>>>(
          S.const_data_ptr<scalar_t>(), M, r0, image_ids.const_data_ptr<int64_t>(),
          text_ids.const_data_ptr<int64_t>(), scale.const_data_ptr<scalar_t>(),
          bias.const_data_ptr<scalar_t>(), loss.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return loss;
}

// The backward's tile loop: dI, dT (float32, unscaled) and the rows' d(logit_bias).
template <typename acc>
void backward_tiles(const at::Tensor& I, const at::Tensor& T, const at::Tensor& ids_i,
                    const at::Tensor& ids_t, const at::Tensor& scale, const at::Tensor& bias,
                    const at::Tensor& grad, at::Tensor& dI, at::Tensor& dT,
                    at::Tensor& dbias_rows) {
  const int64_t N = I.size(0), M = T.size(0), R = sigmoid_tile_rows(N, M);
  const auto acc_type = dI.scalar_type();
  const auto Ia = I.to(acc_type), Ta = T.to(acc_type);  // float32 operands of the G products
  auto tile = at::empty({R, M}, dI.options());
  const auto stream = at::cuda::getCurrentCUDAStream();
  for (int64_t r0 = 0; r0 < N; r0 += R) {
    const int64_t rows = std::min(R, N - r0);
    auto S = tile.narrow(0, 0, rows);
    mm_acc_out(S, I.narrow(0, r0, rows), T.t());
    grad_tile_kernel<acc><<<unsigned(rows), kThreads, 0, stream>>>(
        S.data_ptr<acc>(), M, r0, ids_i.const_data_ptr<int64_t>(), ids_t.const_data_ptr<int64_t>(),
        scale.const_data_ptr<acc>(), bias.const_data_ptr<acc>(), grad.const_data_ptr<acc>(),
        dbias_rows.data_ptr<acc>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    auto dIr = dI.narrow(0, r0, rows);
    at::mm_out(dIr, S, Ta);
    dT.addmm_(S.t(), Ia.narrow(0, r0, rows));
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sigmoid_contrastive_loss_backward_cuda(
    const at::Tensor& grad, const at::Tensor& image_features, const at::Tensor& text_features,
    const at::Tensor& logit_scale, const at::Tensor& logit_bias, const at::Tensor& image_ids_,
    const at::Tensor& text_ids_, bool normalize) {
  check_sigmoid_contrastive_loss_backward("pykernels::sigmoid_contrastive_loss_backward", grad,
                                          image_features, text_features, logit_scale, logit_bias,
                                          image_ids_, text_ids_, at::kCUDA);
  const c10::cuda::CUDAGuard guard(image_features.device());
  const auto dtype = image_features.scalar_type(), acc_type = at::toOpMathType(dtype);
  const auto opts = image_features.options().dtype(acc_type);
  const auto I0 = image_features.contiguous(), T0 = text_features.contiguous();
  const auto I = prepare(I0, normalize), T = prepare(T0, normalize);
  const auto scale = logit_scale.to(acc_type).reshape({1}),
             bias = logit_bias.to(acc_type).reshape({1});
  auto dI = at::zeros({I.size(0), I.size(1)}, opts), dT = at::zeros({T.size(0), T.size(1)}, opts);
  auto dbias_rows = at::zeros({I.size(0)}, opts);
  if (I.size(0) > 0 && T.size(0) > 0) {
    AT_DISPATCH_FLOATING_TYPES(acc_type, "sigmoid_contrastive_loss_backward_cuda", [&] {
      backward_tiles<scalar_t>(I, T, image_ids_.contiguous(), text_ids_.contiguous(), scale, bias,
                               grad.to(acc_type).contiguous(), dI, dT, dbias_rows);
    });
  }
  const auto dscale = (dI * I.to(acc_type)).sum();
  dI.mul_(scale);
  dT.mul_(scale);
  auto dIo = dI.to(dtype), dTo = dT.to(dtype);
  if (normalize) {
    dIo = normalize_rows_backward(dIo, I0, kNormalizeEps);
    dTo = normalize_rows_backward(dTo, T0, kNormalizeEps);
  }
  return {dIo, dTo, dscale.to(logit_scale.scalar_type()).reshape(logit_scale.sizes()),
          dbias_rows.sum().to(logit_bias.scalar_type()).reshape(logit_bias.sizes())};
}

}  // namespace
}  // namespace cuda
}  // namespace pykernels

TORCH_LIBRARY_IMPL(pykernels, CUDA, m) {
  using namespace pykernels::cuda;
  m.impl("sigmoid_contrastive_loss", &sigmoid_contrastive_loss_cuda);
  m.impl("sigmoid_contrastive_loss_backward", &sigmoid_contrastive_loss_backward_cuda);
}
