// End of the AVX2 + FMA region opened by common/cpu_avx2_begin.h.
#pragma GCC pop_options
