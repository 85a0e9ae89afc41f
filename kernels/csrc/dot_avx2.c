/* AVX2 + FMA + F16C kernels: u8 x s8 products through maddubs (pairs into int16) + madd. */
#if defined(__x86_64__) || defined(__i386__)
#pragma GCC target("avx2,fma,f16c")
#define ISA avx2
#include <immintrin.h>

static inline __m256i dot_i32(__m256i u, __m256i s) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}
/* the scale multiplies the int16 pair sums (no overflow: |pair| <= 2*128*127, |scale| < 128) */
static inline __m256i scale_vec(int lo, int hi) {
    return _mm256_set_m128i(_mm_set1_epi16((short)hi), _mm_set1_epi16((short)lo));
}
static inline __m256i dot_i32_sc(__m256i u, __m256i s, __m256i scv) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), scv);
}

#include "dot_x86.h"

const kernel_set KERNELS_AVX2 = {"avx2", KERNEL_TABLE};
#endif
