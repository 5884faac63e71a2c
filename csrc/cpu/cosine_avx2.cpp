// The AVX2 + FMA build of the cosine family's row kernels (cpu/cosine_kernels.h), in
// namespace pykernels::cpu::avx2. cosine.cpp runs it on CPUs that have AVX2 and FMA.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cmath>

#include "common/cpu_capability.h"
#include "common/dispatch.h"

#ifdef PK_HAVE_AVX2_BUILD
#include "common/cpu_avx2_begin.h"
#define PK_COSINE_NS avx2
#include "cpu/cosine_kernels.h"
#include "common/cpu_avx2_end.h"
#endif
