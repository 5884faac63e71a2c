// The AVX2 + FMA build of the contrastive family's tile epilogues (cpu/contrastive_kernels.h),
// in namespace pykernels::cpu::avx2. contrastive.cpp runs it on CPUs that have AVX2 and FMA.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <utility>

#include "common/cpu_capability.h"
#include "common/dispatch.h"

#ifdef PK_HAVE_AVX2_BUILD
#include "common/cpu_avx2_begin.h"
// No contraction of L = x * col_scale into a following subtraction (x * col_scale - m as one
// FMA): the forward's log-sum-exps must be taken over the rounded logits that the backward
// recomputes, or exp(L - lse) no longer sums to 1 and a confident row's gradient p - 1
// carries the difference (test_confident_rows_gradient_keeps_float32_precision).
#pragma GCC optimize("fp-contract=off")
#define PK_CONTRASTIVE_NS avx2
#include "cpu/contrastive_kernels.h"
#include "common/cpu_avx2_end.h"
#endif
