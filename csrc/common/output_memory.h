// Allocation of the kernels' large outputs (gradients, element-wise results).
//
// A fresh CPU tensor of more than a few MB comes from mmap: each 4 KB page then costs a page
// fault at its first write, and for a [65536, 512] float32 gradient those faults took about
// four times as long as writing it. Backed by 2 MB transparent huge pages (Linux, THP mode
// "madvise" or "always") the same first write costs 512 times fewer faults. PyTorch's own
// allocations get the same with THP_MEM_ALLOC_ENABLE=1 (docs/benchmarks.md). The advice is a
// hint: where the kernel has no huge pages it changes nothing. Tensors on other devices are
// allocated as they are.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace pykernels {

// MADV_HUGEPAGE over the 2 MB-aligned part of a CPU tensor's storage of at least 8 MB.
inline void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  if (!t.device().is_cpu() || t.nbytes() < 4 * kHuge) return;
  const auto a = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t begin = (a + kHuge - 1) & ~(kHuge - 1), end = (a + t.nbytes()) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#endif
}

// at::empty for an output the kernel writes in full.
inline at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor t = at::empty(sizes, options);
  advise_huge_pages(t);
  return t;
}

// A contiguous output of x's sizes and options.
inline at::Tensor empty_output_like(const at::Tensor& x) {
  return empty_output(x.sizes(), x.options());
}

}  // namespace pykernels
