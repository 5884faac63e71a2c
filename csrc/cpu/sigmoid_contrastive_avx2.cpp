// The AVX2 + FMA build of the sigmoid contrastive loss's block epilogues
// (cpu/sigmoid_contrastive_kernels.h), in namespace pykernels::cpu::avx2.
// sigmoid_contrastive.cpp runs it on CPUs that have AVX2 and FMA.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>

#include "common/cpu_capability.h"
#include "common/dispatch.h"

#ifdef PK_HAVE_AVX2_BUILD
#include "common/cpu_avx2_begin.h"
#define PK_SIGMOID_NS avx2
#include "cpu/sigmoid_contrastive_kernels.h"
#include "common/cpu_avx2_end.h"
#endif
