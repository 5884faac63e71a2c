// The AVX2 + FMA build of the distillation family's CPU kernels (cpu/distillation_kernels.h),
// in namespace pykernels::cpu::avx2. distillation.cpp runs it on CPUs that have AVX2 and FMA.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

#include "common/cpu_capability.h"
#include "common/dispatch.h"
#include "common/distillation_args.h"

#ifdef PK_HAVE_AVX2_BUILD
#include "common/cpu_avx2_begin.h"
#define PK_DISTILL_NS avx2
#include "cpu/distillation_kernels.h"
#include "common/cpu_avx2_end.h"
#endif
