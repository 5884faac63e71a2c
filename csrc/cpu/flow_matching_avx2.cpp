// The AVX2 + FMA build of the flow-matching family's CPU kernels (cpu/flow_matching_kernels.h),
// in namespace pykernels::cpu::avx2. flow_matching.cpp runs it on CPUs that have AVX2 and FMA.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>

#include "common/cpu_capability.h"
#include "common/dispatch.h"
#include "common/flow_matching_args.h"

#ifdef PK_HAVE_AVX2_BUILD
#include "common/cpu_avx2_begin.h"
#define PK_FLOW_NS avx2
#include "cpu/flow_matching_kernels.h"
#include "common/cpu_avx2_end.h"
#endif
