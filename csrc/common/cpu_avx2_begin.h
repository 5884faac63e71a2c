// Start of an AVX2 + FMA region in a <family>_avx2.cpp file (see common/cpu_capability.h).
// Include every other header BEFORE this one: functions defined after it are compiled for
// AVX2, and an inline function from a shared header compiled here could be picked by the
// linker for the baseline files too. Only at::vec (namespace at::vec::AVX2, as in ATen's own
// AVX2 kernels) and common/cpu_vec.h (namespace pykernels::cpu::AVX2) are included here.
// End the region with common/cpu_avx2_end.h.
#ifndef PK_HAVE_AVX2_BUILD
#error "common/cpu_avx2_begin.h needs PK_HAVE_AVX2_BUILD (common/cpu_capability.h)"
#endif
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
// The pragma does not define the feature macros that sleef.h reads to declare its AVX2
// functions (exported by libtorch_cpu); define them for these headers only.
#ifndef __AVX__
#define __AVX__ 1
#define PK_UNDEF_AVX
#endif
#ifndef __AVX2__
#define __AVX2__ 1
#define PK_UNDEF_AVX2
#endif
#ifndef __FMA__
#define __FMA__ 1
#define PK_UNDEF_FMA
#endif
#ifndef __F16C__
#define __F16C__ 1
#define PK_UNDEF_F16C
#endif
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include "common/cpu_vec.h"
#ifdef PK_UNDEF_AVX
#undef __AVX__
#undef PK_UNDEF_AVX
#endif
#ifdef PK_UNDEF_AVX2
#undef __AVX2__
#undef PK_UNDEF_AVX2
#endif
#ifdef PK_UNDEF_FMA
#undef __FMA__
#undef PK_UNDEF_FMA
#endif
#ifdef PK_UNDEF_F16C
#undef __F16C__
#undef PK_UNDEF_F16C
#endif
