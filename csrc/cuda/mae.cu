// CUDA kernels of the MAE family (pykernels/reference/mae.py has the math):
//   gather_rows_kernel        out[n, t] = src[n, idx[n, t]], a fill row or zeros: random_masking
//                             forward and backward, unshuffle_with_mask_tokens forward, and its
//                             backward's visible rows (through invert_ids_kernel)
//   restore_ids_kernel        random_masking's ids_restore and mask from the sorted noise
//   mask_token_partial_kernel unshuffle_with_mask_tokens' mask token gradient per sample,
//   sum_rows_kernel           then summed over samples
//   gather_patches_kernel     gather_patches; scatter_patches_kernel its backward
//   masked_patch_loss_kernel  masked_patch_loss's per-patch terms (the masked mean is ATen's)
// No host synchronisation, so ids are not validated on the host: a row whose id is out of
// range is written as NaN, and a repeated id (seen when a backward inverts the ids)
// gives NaN gradient rows. Token gathers are one warp per row with 16-byte packs where
// aligned; patch gathers one block per patch (forward) or image row (backward), with 32-bit
// index math inside a patch and int64 offsets; the per-patch loss is one warp per patch.
// Sums run in a fixed order (warp shuffles, then per-sample partials summed in sample
// order): deterministic, no float atomics.
#include <torch/library.h>

#include "common/cuda_utils.cuh"
#include "common/mae_args.h"

namespace pykernels {
namespace cuda {
namespace {

using namespace pykernels::mae;

constexpr int kRowsPerBlock = 8;  // warps per block for row kernels
constexpr int kThreads = 256;

template <typename scalar_t>
__device__ __forceinline__ scalar_t quiet_nan() {
  return static_cast<scalar_t>(__int_as_float(0x7fffffff));
}

// Blocks for a grid-stride loop over n elements.
inline int64_t elem_blocks(int64_t n) { return row_blocks(n, kThreads); }

#define PK_FOR_EACH_ROW(rows)                                                             \
  const int lane = threadIdx.x % kWarp;                                                   \
  for (int64_t r = int64_t(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp; r < (rows); \
       r += int64_t(gridDim.x) * kRowsPerBlock)

#define PK_FOR_EACH_ELEM(i, total)                                              \
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < (total); \
       i += int64_t(gridDim.x) * blockDim.x)

// ---------------------------------------------------------------------------- tokens
// out[n, t] = src[n, i] (0 <= i < S), fill or 0 (S <= i < hi), NaN otherwise;
// i = idx[n * idx_stride + t].
template <typename scalar_t, bool kPacked>
__global__ void gather_rows_kernel(const scalar_t* __restrict__ src,
                                   const int64_t* __restrict__ idx, int64_t idx_stride,
                                   const scalar_t* __restrict__ fill, scalar_t* __restrict__ out,
                                   int64_t R, int64_t T, int64_t S, int64_t D, int64_t hi) {
  PK_FOR_EACH_ROW(R) {
    const int64_t i = idx[(r / T) * idx_stride + r % T];
    const scalar_t* from = nullptr;
    bool poison = false;
    if (i >= 0 && i < S)
      from = src + ((r / T) * S + i) * D;
    else if (i >= S && i < hi)
      from = fill;  // nullptr: zeros
    else
      poison = true;
    scalar_t* to = out + r * D;
    const scalar_t fixed = poison ? quiet_nan<scalar_t>() : scalar_t(0);
    if constexpr (kPacked) {
      using P = Pack<scalar_t>;
      P c;
#pragma unroll
      for (int k = 0; k < P::kSize; ++k) c.v[k] = fixed;
      for (int64_t d = int64_t(lane) * P::kSize; d < D; d += kWarp * P::kSize)
        *reinterpret_cast<P*>(to + d) = from ? *reinterpret_cast<const P*>(from + d) : c;
    } else {
      for (int64_t d = lane; d < D; d += kWarp) to[d] = from ? from[d] : fixed;
    }
  }
}

// inv[n, ids[n, k]] = k for ids in [0, T) (mark = false); then (mark = true) a slot
// whose value is not this k was claimed by another k too: it becomes -1.
__global__ void invert_ids_kernel(const int64_t* __restrict__ ids, int64_t* inv, int64_t R,
                                  int64_t K, int64_t T, bool mark) {
  PK_FOR_EACH_ELEM(r, R) {
    const int64_t v = ids[r], k = r % K;
    if (v < 0 || v >= T) continue;
    int64_t* slot = inv + (r / K) * T + v;
    if (!mark)
      *slot = k;
    else if (*slot != k)
      *slot = -1;
  }
}

// part[n, d] = sum over l in order with K <= ids[n, l] < L of g[n, l, d].
template <typename scalar_t>
__global__ void mask_token_partial_kernel(const scalar_t* __restrict__ g,
                                          const int64_t* __restrict__ ids,
                                          acc_t<scalar_t>* __restrict__ part, int64_t L, int64_t D,
                                          int64_t K) {
  using acc = acc_t<scalar_t>;
  const int64_t n = blockIdx.x, d = int64_t(blockIdx.y) * blockDim.x + threadIdx.x;
  if (d >= D) return;
  acc s = 0;
  for (int64_t l = 0; l < L; ++l) {
    const int64_t v = ids[n * L + l];
    if (v >= K && v < L) s += static_cast<acc>(g[(n * L + l) * D + d]);
  }
  part[n * D + d] = s;
}

template <typename scalar_t>
__global__ void sum_rows_kernel(const acc_t<scalar_t>* __restrict__ part,
                                scalar_t* __restrict__ out, int64_t N, int64_t D) {
  PK_FOR_EACH_ELEM(d, D) {
    acc_t<scalar_t> s = 0;
    for (int64_t n = 0; n < N; ++n) s += part[n * D + d];
    out[d] = static_cast<scalar_t>(s);
  }
}

// ids_restore[n, ids_shuffle[n, k]] = k and mask[n, ids_shuffle[n, k]] = (k >= K), r = n*L + k.
template <typename scalar_t>
__global__ void restore_ids_kernel(const int64_t* __restrict__ ids_shuffle,
                                   int64_t* __restrict__ ids_restore, scalar_t* __restrict__ mask,
                                   int64_t R, int64_t L, int64_t K) {
  PK_FOR_EACH_ELEM(r, R) {
    const int64_t k = r % L, slot = (r - k) + ids_shuffle[r];
    ids_restore[slot] = k;
    mask[slot] = scalar_t(k >= K ? 1 : 0);
  }
}

// out [N, T, D] = gather_rows_kernel(src [N, S, D], idx [N, >= T] with row stride idx.stride(0)).
template <typename scalar_t>
void launch_gather_rows(const at::Tensor& src, const at::Tensor& idx, const scalar_t* fill,
                        at::Tensor& out, int64_t hi) {
  const int64_t N = src.size(0), S = src.size(1), D = src.size(2), T = out.size(1), R = N * T;
  if (out.numel() == 0) return;
  const scalar_t* ps = src.const_data_ptr<scalar_t>();
  scalar_t* po = out.data_ptr<scalar_t>();
  const bool packed = packable<scalar_t>(ps, D) && packable<scalar_t>(po, D) &&
                      (fill == nullptr || packable<scalar_t>(fill, D));
  const dim3 grid(row_blocks(R, kRowsPerBlock)), block(kRowsPerBlock * kWarp);
  auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t* pi = idx.const_data_ptr<int64_t>();
  const int64_t stride = idx.stride(0);
  if (packed)
    gather_rows_kernel<scalar_t, true>
        <<<grid, block, 0, stream>>>(ps, pi, stride, fill, po, R, T, S, D, hi);
  else
    gather_rows_kernel<scalar_t, false>
        <<<grid, block, 0, stream>>>(ps, pi, stride, fill, po, R, T, S, D, hi);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// [N, T] inverse of ids [N, K] (contiguous): k, K where unused, -1 where repeated.
at::Tensor invert_ids(const at::Tensor& ids, int64_t T) {
  const int64_t N = ids.size(0), K = ids.size(1), R = N * K;
  auto inv = at::full({N, T}, K, ids.options());
  if (R == 0 || T == 0) return inv;
  auto stream = at::cuda::getCurrentCUDAStream();
  for (bool mark : {false, true}) {
    invert_ids_kernel<<<elem_blocks(R), kThreads, 0, stream>>>(
        ids.const_data_ptr<int64_t>(), inv.data_ptr<int64_t>(), R, K, T, mark);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return inv;
}

// Pass 1: ids_shuffle = the stable sort of noise per sample (ATen's, NaN last); pass 2
// restore_ids_kernel; pass 3: x_visible = x gathered by the first K of ids_shuffle.
std::tuple<at::Tensor, at::Tensor, at::Tensor> random_masking_cuda(const at::Tensor& x_,
                                                                   double mask_ratio,
                                                                   const at::Tensor& noise) {
  check_random_masking("pykernels::random_masking", x_, noise, mask_ratio, at::kCUDA);
  const c10::cuda::CUDAGuard guard(x_.device());
  const auto x = x_.contiguous();
  const int64_t N = x.size(0), L = x.size(1), K = num_keep(L, mask_ratio), R = N * L;
  const auto ids_shuffle = std::get<1>(noise.sort(/*stable=*/true, /*dim=*/1,
                                                  /*descending=*/false))
                               .contiguous();
  auto ids_restore = at::empty({N, L}, ids_shuffle.options());
  auto mask = at::empty({N, L}, x.options());
  auto x_visible = at::empty({N, K, x.size(2)}, x.options());
  PK_DISPATCH_FLOATING(x.scalar_type(), "random_masking_cuda", [&] {
    if (R > 0) {
      auto stream = at::cuda::getCurrentCUDAStream();
      restore_ids_kernel<scalar_t><<<elem_blocks(R), kThreads, 0, stream>>>(
          ids_shuffle.const_data_ptr<int64_t>(), ids_restore.data_ptr<int64_t>(),
          mask.data_ptr<scalar_t>(), R, L, K);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    launch_gather_rows<scalar_t>(x, ids_shuffle, nullptr, x_visible, L);
  });
  return {x_visible, mask, ids_restore};
}

// grad_x[n, l] = grad[n, ids_restore[n, l]] for kept tokens (< K), zeros for removed ones.
at::Tensor random_masking_backward_cuda(const at::Tensor& grad_, const at::Tensor& ids_restore_) {
  check_random_masking_backward("pykernels::random_masking_backward", grad_, ids_restore_,
                                at::kCUDA);
  const c10::cuda::CUDAGuard guard(grad_.device());
  const auto grad = grad_.contiguous(), ids = ids_restore_.contiguous();
  const int64_t L = ids.size(1);
  auto out = at::empty({grad.size(0), L, grad.size(2)}, grad.options());
  PK_DISPATCH_FLOATING(grad.scalar_type(), "random_masking_backward_cuda",
                       [&] { launch_gather_rows<scalar_t>(grad, ids, nullptr, out, L); });
  return out;
}

at::Tensor unshuffle_with_mask_tokens_cuda(const at::Tensor& x_visible_,
                                           const at::Tensor& mask_token_,
                                           const at::Tensor& ids_restore_) {
  check_unshuffle("pykernels::unshuffle_with_mask_tokens", x_visible_, mask_token_, ids_restore_,
                  at::kCUDA);
  const c10::cuda::CUDAGuard guard(x_visible_.device());
  const auto xv = x_visible_.contiguous(), token = mask_token_.contiguous();
  const auto ids = ids_restore_.contiguous();
  const int64_t L = ids.size(1);
  auto out = at::empty({xv.size(0), L, xv.size(2)}, xv.options());
  PK_DISPATCH_FLOATING(xv.scalar_type(), "unshuffle_with_mask_tokens_cuda", [&] {
    launch_gather_rows<scalar_t>(xv, ids, token.const_data_ptr<scalar_t>(), out, L);
  });
  return out;
}

// Pass 1: grad_x_visible = grad gathered by the inverse of ids_restore; pass 2: the mask
// token's gradient, per-sample sums over its slots, then a sum over samples.
std::tuple<at::Tensor, at::Tensor> unshuffle_with_mask_tokens_backward_cuda(const at::Tensor& grad_,
                                                                            const at::Tensor& ids_,
                                                                            int64_t K) {
  check_unshuffle_backward("pykernels::unshuffle_with_mask_tokens_backward", grad_, ids_, K,
                           at::kCUDA);
  const int64_t N = grad_.size(0), L = grad_.size(1), D = grad_.size(2);
  const c10::cuda::CUDAGuard guard(grad_.device());
  const auto grad = grad_.contiguous(), ids = ids_.contiguous();
  const auto inv = invert_ids(ids, K);  // [N, K]: the slot l of each visible token
  auto gx = at::empty({N, K, D}, grad.options());
  auto gm = at::empty({D}, grad.options());
  auto part = at::empty({N, D}, grad.options().dtype(at::toOpMathType(grad.scalar_type())));
  auto stream = at::cuda::getCurrentCUDAStream();
  PK_DISPATCH_FLOATING(grad.scalar_type(), "unshuffle_backward_cuda", [&] {
    launch_gather_rows<scalar_t>(grad, inv, nullptr, gx, L + 1);
    if (D == 0) return;
    if (N > 0 && L > 0) {
      const dim3 grid(N, (D + kThreads - 1) / kThreads);
      mask_token_partial_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
          grad.const_data_ptr<scalar_t>(), ids.const_data_ptr<int64_t>(),
          part.data_ptr<acc_t<scalar_t>>(), L, D, K);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    } else {
      part.zero_();
    }
    sum_rows_kernel<scalar_t><<<elem_blocks(D), kThreads, 0, stream>>>(
        part.const_data_ptr<acc_t<scalar_t>>(), gm.data_ptr<scalar_t>(), N, D);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {gx, gm};
}

// ---------------------------------------------------------------------------- patches
// Patch geometry. Within a patch, element indices are int32 (P < 2^31 is checked on
// the host) so the per-element divisions are 32-bit; image offsets are int64.
struct Geom {
  int64_t C, H, W, p, w, L, P;
};

inline Geom geom(const char* op, int64_t C, int64_t H, int64_t W, int64_t p) {
  TORCH_CHECK_VALUE(p * p * C < (int64_t(1) << 31) && W < (int64_t(1) << 31), op,
                    ": a patch must have fewer than 2^31 elements, got p*p*C = ", p * p * C);
  return {C, H, W, p, W / p, (H / p) * (W / p), p * p * C};
}

// Offset in [N, C, H, W] of the first pixel of patch l of image n.
__device__ __forceinline__ int64_t patch_base(const Geom& g, int64_t n, int64_t l) {
  return (n * g.C * g.H + (l / g.w) * g.p) * g.W + (l % g.w) * g.p;
}

// Offset from patch_base of element e = (pi*p + pj)*C + c.
__device__ __forceinline__ int64_t patch_elem(const Geom& g, int e) {
  const int C = int(g.C), p = int(g.p);
  const int q = e / C, c = e - q * C, pi = q / p, pj = q - pi * p;
  return int64_t(c) * g.H * g.W + int64_t(pi) * g.W + pj;
}

// One block per output patch row r = n*K + k (grid-stride); threads over its elements.
template <typename scalar_t>
__global__ void gather_patches_kernel(const scalar_t* __restrict__ img,
                                      const int64_t* __restrict__ ids, scalar_t* __restrict__ out,
                                      int64_t R, int64_t K, Geom g) {
  for (int64_t r = blockIdx.x; r < R; r += gridDim.x) {
    const int64_t id = ids[r];
    const bool ok = id >= 0 && id < g.L;
    const scalar_t* src = img + (ok ? patch_base(g, r / K, id) : 0);
    scalar_t* dst = out + r * g.P;
    for (int e = threadIdx.x; e < g.P; e += blockDim.x)
      dst[e] = ok ? src[patch_elem(g, e)] : quiet_nan<scalar_t>();
  }
}

// Image gradient in image order: 0 where the patch was not kept (inv == K), NaN where
// its id was repeated (inv == -1).
// One block per image row (n, c, y), grid-stride; threads over its pixels x.
template <typename scalar_t>
__global__ void scatter_patches_kernel(const scalar_t* __restrict__ grad,
                                       const int64_t* __restrict__ inv, scalar_t* __restrict__ out,
                                       int64_t rows, int64_t K, Geom g) {
  const int p = int(g.p);
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t y = row % g.H, c = (row / g.H) % g.C, n = row / (g.H * g.C);
    const int64_t* inv_row = inv + n * g.L + (y / p) * g.w;
    const int64_t inner = int64_t(y % p) * p * g.C + c;
    for (int x = threadIdx.x; x < g.W; x += blockDim.x) {
      const int j = x / p, pj = x - j * p;
      const int64_t k = inv_row[j];
      scalar_t v;
      if (k >= 0 && k < K)
        v = grad[(n * K + k) * g.P + inner + int64_t(pj) * g.C];
      else
        v = k == K ? scalar_t(0) : quiet_nan<scalar_t>();
      out[row * g.W + x] = v;
    }
  }
}

at::Tensor gather_patches_cuda(const at::Tensor& imgs_, const at::Tensor& ids_, int64_t p) {
  const char* op = "pykernels::gather_patches";
  check_gather_patches(op, imgs_, ids_, p, at::kCUDA);
  const c10::cuda::CUDAGuard guard(imgs_.device());
  const auto imgs = imgs_.contiguous(), ids = ids_.contiguous();
  const Geom g = geom(op, imgs.size(1), imgs.size(2), imgs.size(3), p);
  const int64_t K = ids.size(1), R = imgs.size(0) * K;
  auto out = at::empty({imgs.size(0), K, g.P}, imgs.options());
  if (out.numel() == 0) return out;
  PK_DISPATCH_FLOATING(imgs.scalar_type(), "gather_patches_cuda", [&] {
    auto stream = at::cuda::getCurrentCUDAStream();
    gather_patches_kernel<scalar_t><<<row_blocks(R, 1), kThreads, 0, stream>>>(
        imgs.const_data_ptr<scalar_t>(), ids.const_data_ptr<int64_t>(), out.data_ptr<scalar_t>(), R,
        K, g);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor gather_patches_backward_cuda(const at::Tensor& grad_, const at::Tensor& ids_, int64_t p,
                                        int64_t C, int64_t H, int64_t W) {
  const char* op = "pykernels::gather_patches_backward";
  check_gather_patches_backward(op, grad_, ids_, p, C, H, W, at::kCUDA);
  const c10::cuda::CUDAGuard guard(grad_.device());
  const auto grad = grad_.contiguous(), ids = ids_.contiguous();
  const Geom g = geom(op, C, H, W, p);
  const auto inv = invert_ids(ids, g.L);
  auto out = at::empty({grad.size(0), C, H, W}, grad.options());
  const int64_t rows = grad.size(0) * C * H;
  if (out.numel() == 0) return out;
  PK_DISPATCH_FLOATING(grad.scalar_type(), "gather_patches_backward_cuda", [&] {
    auto stream = at::cuda::getCurrentCUDAStream();
    scatter_patches_kernel<scalar_t><<<row_blocks(rows, 1), kThreads, 0, stream>>>(
        grad.const_data_ptr<scalar_t>(), inv.const_data_ptr<int64_t>(), out.data_ptr<scalar_t>(),
        rows, ids.size(1), g);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

// ---------------------------------------------------------------------------- masked_patch_loss
template <typename acc>
struct TargetNorm {
  acc mean, rstd;
};

// Pass 1 of a patch (one warp): mean = sum(t) / P and rstd = 1 / sqrt(var + 1e-6),
// var = sum((t - mean)^2) / (P - 1) (unbiased, as torch.var); the second pass re-reads the
// patch from L1/L2.
template <typename scalar_t, typename acc = acc_t<scalar_t>>
__device__ TargetNorm<acc> target_norm(const scalar_t* t, const Geom& g, int lane) {
  const int P = int(g.P);
  acc s = 0;
  for (int e = lane; e < P; e += kWarp) s += static_cast<acc>(t[patch_elem(g, e)]);
  const acc mean = warp_sum(s) / acc(P);
  acc ss = 0;
  for (int e = lane; e < P; e += kWarp) {
    const acc d = static_cast<acc>(t[patch_elem(g, e)]) - mean;
    ss += d * d;
  }
  return {mean, acc(1) / sqrt(warp_sum(ss) / acc(P - 1) + acc(1e-6))};
}

// One warp per patch r = n*L + l, the per-patch terms of masked_patch_loss. Pass 1
// target_norm (norm_pix_loss); pass 2 per_patch[r] = mean_e (pred[r, e] - tn[e])^2, tn the
// normalised target, and (kBackward) grad_pred[r, e] = coef[r] (pred[r, e] - tn[e]).
template <typename scalar_t, bool kBackward>
__global__ void masked_patch_loss_kernel(const scalar_t* __restrict__ pred,
                                         const scalar_t* __restrict__ img,
                                         const acc_t<scalar_t>* __restrict__ coef,
                                         acc_t<scalar_t>* __restrict__ per_patch,
                                         scalar_t* __restrict__ grad_pred, int64_t R, Geom g,
                                         bool norm) {
  using acc = acc_t<scalar_t>;
  PK_FOR_EACH_ROW(R) {
    const scalar_t* t = img + patch_base(g, r / g.L, r % g.L);
    const TargetNorm<acc> tn =
        norm ? target_norm<scalar_t>(t, g, lane) : TargetNorm<acc>{acc(0), acc(1)};
    const scalar_t* x = pred + r * g.P;
    const acc k = kBackward ? coef[r] : acc(0);
    const int P = int(g.P);
    acc s = 0;
    for (int e = lane; e < P; e += kWarp) {
      const acc d =
          static_cast<acc>(x[e]) - (static_cast<acc>(t[patch_elem(g, e)]) - tn.mean) * tn.rstd;
      if (kBackward) grad_pred[r * g.P + e] = static_cast<scalar_t>(k * d);
      s += d * d;
    }
    s = warp_sum(s);
    if (lane == 0) per_patch[r] = s / acc(P);
  }
}

// per_patch [N, L] (accumulation dtype) and, with coef, grad_pred.
at::Tensor launch_masked_patch_loss(const char* op, const at::Tensor& pred, const at::Tensor& imgs,
                                    int64_t p, bool norm, const at::Tensor& coef,
                                    at::Tensor* grad_pred) {
  const Geom g = geom(op, imgs.size(1), imgs.size(2), imgs.size(3), p);
  auto per_patch = at::empty({pred.size(0), pred.size(1)},
                             pred.options().dtype(at::toOpMathType(pred.scalar_type())));
  const int64_t R = per_patch.numel();
  if (R == 0) return per_patch;
  const dim3 grid(row_blocks(R, kRowsPerBlock)), block(kRowsPerBlock * kWarp);
  auto stream = at::cuda::getCurrentCUDAStream();
  PK_DISPATCH_FLOATING(pred.scalar_type(), "masked_patch_loss_cuda", [&] {
    using acc = acc_t<scalar_t>;
    if (grad_pred == nullptr) {
      masked_patch_loss_kernel<scalar_t, false><<<grid, block, 0, stream>>>(
          pred.const_data_ptr<scalar_t>(), imgs.const_data_ptr<scalar_t>(), nullptr,
          per_patch.data_ptr<acc>(), nullptr, R, g, norm);
    } else {
      masked_patch_loss_kernel<scalar_t, true><<<grid, block, 0, stream>>>(
          pred.const_data_ptr<scalar_t>(), imgs.const_data_ptr<scalar_t>(),
          coef.const_data_ptr<acc>(), per_patch.data_ptr<acc>(), grad_pred->data_ptr<scalar_t>(), R,
          g, norm);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return per_patch;
}

// loss = sum(per_patch * mask) / sum(mask) (ATen's reductions: no host sync, no atomics).
at::Tensor masked_patch_loss_cuda(const at::Tensor& pred_, const at::Tensor& imgs_,
                                  const at::Tensor& mask, int64_t p, bool norm) {
  const char* op = "pykernels::masked_patch_loss";
  check_masked_patch_loss(op, pred_, imgs_, mask, p, at::kCUDA);
  const c10::cuda::CUDAGuard guard(pred_.device());
  const auto pred = pred_.contiguous(), imgs = imgs_.contiguous();
  const auto per_patch = launch_masked_patch_loss(op, pred, imgs, p, norm, at::Tensor(), nullptr);
  const auto m = mask.to(per_patch.scalar_type());
  return (per_patch * m).sum() / m.sum();
}

// With w = grad / sum(mask): grad_pred = 2 w mask / P (pred - tn), grad_mask = w (per_patch -
// loss).
std::tuple<at::Tensor, at::Tensor> masked_patch_loss_backward_cuda(const at::Tensor& grad,
                                                                   const at::Tensor& pred_,
                                                                   const at::Tensor& imgs_,
                                                                   const at::Tensor& mask,
                                                                   int64_t p, bool norm) {
  const char* op = "pykernels::masked_patch_loss_backward";
  check_masked_patch_loss(op, pred_, imgs_, mask, p, at::kCUDA);
  check_scalar_grad(op, grad, pred_);
  const c10::cuda::CUDAGuard guard(pred_.device());
  const auto pred = pred_.contiguous(), imgs = imgs_.contiguous();
  const auto m = mask.to(at::toOpMathType(pred.scalar_type())).contiguous();
  const auto total = m.sum();
  const auto w = grad.to(m.scalar_type()) / total;
  const auto coef = (w * m * (2.0 / static_cast<double>(pred.size(2)))).contiguous();
  auto grad_pred = at::empty_like(pred);
  const auto per_patch = launch_masked_patch_loss(op, pred, imgs, p, norm, coef, &grad_pred);
  const auto loss = (per_patch * m).sum() / total;
  return {grad_pred, (w * (per_patch - loss)).to(mask.scalar_type())};
}

}  // namespace
}  // namespace cuda
}  // namespace pykernels

TORCH_LIBRARY_IMPL(pykernels, CUDA, m) {
  using namespace pykernels::cuda;
  m.impl("random_masking", &random_masking_cuda);
  m.impl("random_masking_backward", &random_masking_backward_cuda);
  m.impl("unshuffle_with_mask_tokens", &unshuffle_with_mask_tokens_cuda);
  m.impl("unshuffle_with_mask_tokens_backward", &unshuffle_with_mask_tokens_backward_cuda);
  m.impl("gather_patches", &gather_patches_cuda);
  m.impl("gather_patches_backward", &gather_patches_backward_cuda);
  m.impl("masked_patch_loss", &masked_patch_loss_cuda);
  m.impl("masked_patch_loss_backward", &masked_patch_loss_backward_cuda);
}
