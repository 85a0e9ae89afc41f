/* AVX2 + FMA + F16C kernels: u8 x s8 products through maddubs (pairs into int16) + madd. */
#if defined(__x86_64__) || defined(__i386__)
#pragma GCC target("avx2,fma,f16c")
#define ISA avx2
#include <immintrin.h>

static inline __m256i dot_i32(__m256i u, __m256i s) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}
#define OFFSET_CODES 0  /* maddubs saturates int16 pairs of codes up to 255 */
static inline __m256i dot_acc(__m256i acc, __m256i u, __m256i s) { return _mm256_add_epi32(acc, dot_i32(u, s)); }
/* the scale multiplies the int16 pair sums (no overflow: |pair| <= 2*128*127, |scale| < 128) */
static inline __m256i dot_acc_sc(__m256i acc, __m256i u, __m256i s, __m256i sc) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), sc));
}

#include "dot_x86.h"

const kernel_set KERNELS_AVX2 = {"avx2", KERNEL_TABLE};
#endif
