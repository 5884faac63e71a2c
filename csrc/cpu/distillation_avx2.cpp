// The AVX2 + FMA build of the distillation family's CPU kernels (cpu/distillation_kernels.h),
// in namespace pykernels::cpu::avx2; cpu/distillation.cpp runs it on CPUs that have AVX2,
// FMA and F16C.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

#ifdef __linux__
#include <sys/mman.h>  // madvise (map_pages)
#endif

#include "common/cpu_capability.h"
#include "common/dispatch.h"
#include "common/distillation_args.h"

#ifdef PK_HAVE_AVX2_BUILD
#include "common/cpu_avx2_begin.h"
#define PK_DISTILLATION_NS avx2
#include "cpu/distillation_kernels.h"
#include "common/cpu_avx2_end.h"
#endif
