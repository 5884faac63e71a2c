// Helpers shared by the CUDA kernels: warp reductions, launch geometry, and
// vectorised loads/stores of PackSize elements (16 bytes) in the accumulation type.
#pragma once
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAException.h>
#include <torch/version.h>

#include "common/dispatch.h"

namespace pykernels {
namespace cuda {

constexpr int kWarp = 32;

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2)
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

template <typename T>
__device__ __forceinline__ T warp_max(T v) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    v = max(v, __shfl_xor_sync(0xffffffffu, v, offset));
  }
  return v;
}

// Sum (kMax = false) or max over the block, in a fixed order; every thread gets it.
template <bool kMax, typename T>
__device__ T block_reduce(T v, T* smem) {
  v = kMax ? warp_max(v) : warp_sum(v);
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  __syncthreads();  // smem may still be read by a previous reduction
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  if (warp == 0) {
    T x = lane < int(blockDim.x / kWarp) ? smem[lane] : (kMax ? T(-INFINITY) : T(0));
    x = kMax ? warp_max(x) : warp_sum(x);
    if (lane == 0) smem[0] = x;
  }
  __syncthreads();
  return smem[0];
}

// out = a @ b with the accumulation dtype's output (float32 for half inputs).
inline void mm_acc_out(at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() == out.scalar_type()) {
    at::mm_out(out, a, b);
    return;
  }
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 8)
  at::mm_out(out, a, b, out.scalar_type());  // tensor cores, float32 output
#else
  at::mm_out(out, a.to(out.scalar_type()), b.to(out.scalar_type()));
#endif
}

// 16-byte packs: 4 floats, 8 halves/bfloat16s, 2 doubles.
template <typename scalar_t>
struct alignas(16) Pack {
  static constexpr int kSize = 16 / sizeof(scalar_t);
  scalar_t v[kSize];
};

// True when rows of length D starting at ptr can be read in 16-byte packs.
template <typename scalar_t>
inline bool packable(const void* ptr, int64_t D) {
  return reinterpret_cast<uintptr_t>(ptr) % 16 == 0 && D % Pack<scalar_t>::kSize == 0;
}

// Blocks for a grid-stride loop over `rows` with `rows_per_block` rows each, capped at
// a few waves of the device's SMs.
inline int64_t row_blocks(int64_t rows, int rows_per_block) {
  const int64_t need = (rows + rows_per_block - 1) / rows_per_block;
  const int64_t cap = int64_t(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 32;
  return std::max<int64_t>(1, std::min(need, cap));
}

}  // namespace cuda
}  // namespace pykernels
