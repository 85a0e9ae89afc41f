/* AVX-512 VNNI kernels on 256-bit vectors: vpdpbusd sums four u8 x s8 products straight into
 * int32 (no int16 stage). Zen 4 splits 512-bit ops in two, so wider vectors would buy nothing
 * for these memory-bound loops; VL gives 32 vector registers for the 8-row accumulators. */
#if defined(__x86_64__) || defined(__i386__)
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")
#define ISA avx512vnni
#include <immintrin.h>

static inline __m256i dot_i32(__m256i u, __m256i s) {
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
}
#define OFFSET_CODES 1
static inline __m256i dot_acc(__m256i acc, __m256i u, __m256i s) { return _mm256_dpbusd_epi32(acc, u, s); }
/* scaled: the int16 pair sums of maddubs times the int16 scales, accumulated by vpdpwssd */
static inline __m256i dot_acc_sc(__m256i acc, __m256i u, __m256i s, __m256i sc) {
    return _mm256_dpwssd_epi32(acc, _mm256_maddubs_epi16(u, s), sc);
}

#include "dot_x86.h"

const kernel_set KERNELS_AVX512VNNI = {"avx512vnni", KERNEL_TABLE};
#endif
