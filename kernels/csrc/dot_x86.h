/* x86 SIMD dot products, written once and compiled twice: dot_avx2.c and dot_avx512.c include
 * this file after defining
 *   ISA                      suffix of the kernel names
 *   dot_i32(u, s)              8 x int32, lane i = sum of u8 u[4i..4i+3] * s8 s[4i..4i+3]
 *   dot_acc(acc, u, s)         acc + dot_i32(u, s)
 *   OFFSET_CODES               1 when dot_acc is exact for any u8 codes (no int16 stage)
 *   dot_acc_sc(acc, u, s, sc)  acc + dot_i32(u, s) * scale, sc holding int16 scales: the
 *                              low 128 bits scale values 0-15, the high 128 bits 16-31
 * All integer sums are exact, so both builds give bit-identical results.
 *
 * Shared scheme: weights are unpacked to unsigned codes in 32-byte vectors; signed codes
 * (Q8_0, IQ4) use |w| with the sign moved onto x (sign_epi8). Offsets of unsigned codes
 * (Q4_0's -8, Q4_1's min, K-quant mins, Q6_K's -32) are applied once per block through the
 * activation block sums. Each activation row t has its own accumulators and the same
 * instruction sequence whatever NT is, which is what makes a row's result independent of the
 * batch. NT is a compile-time constant (always_inline + switch) so accumulators stay in
 * registers and each weight block is decoded once for all NT rows.
 *
 * Multi-row cost: a 32-value vector per row costs one dot_acc and nothing else when eight
 * vectors from eight different scale groups are transposed (32-bit lanes, once per weight
 * block, shared by all rows) so that lane i always meets group i: the rows then read the
 * activations in the matching interleaved order (acts.qsi) and apply all eight scales with one
 * vector multiply, instead of a scaled multiply-add or a float conversion per vector per row. */
#include <immintrin.h>

#include "qtypes.h"

#define ALWAYS __attribute__((always_inline)) static inline
#define CAT_(a, b) a##_##b
#define CAT(a, b) CAT_(a, b)
#define KNAME(name) CAT(name, ISA)

ALWAYS float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

ALWAYS float fp16(const uint8_t *p) { return _cvtsh_ss(rd_u16(p)); }

/* 16 bytes of nibbles -> 32 codes: low nibbles (values 0-15) then high nibbles (16-31) */
ALWAYS __m256i nibbles32(const uint8_t *p) {
    __m128i raw = _mm_loadu_si128((const __m128i *)p);
    return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), _mm256_set1_epi8(15));
}

/* bit i of qh -> 0x10 in byte i (the fifth bit of Q5_0/Q5_1 value i) */
ALWAYS __m256i fifth_bits(uint32_t qh) {
    const __m256i spread = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                            2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    __m256i bytes = _mm256_shuffle_epi8(_mm256_set1_epi32((int)qh), spread);
    __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(bytes, bit), bit);
    return _mm256_and_si256(set, _mm256_set1_epi8(0x10));
}

ALWAYS __m256i iq4_grid(void) {
    return _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)IQ4_GRID));
}

ALWAYS __m256i load32(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }

/* 8 x 8 transpose of 32-bit lanes: lane i of v[c] becomes lane c of v[i] */
ALWAYS void transpose8(__m256i v[8]) {
    __m256i a[8], b[8];
    for (int i = 0; i < 8; i += 2) {
        a[i] = _mm256_unpacklo_epi32(v[i], v[i + 1]);
        a[i + 1] = _mm256_unpackhi_epi32(v[i], v[i + 1]);
    }
    for (int h = 0; h < 8; h += 4) {
        b[h] = _mm256_unpacklo_epi64(a[h], a[h + 2]);
        b[h + 1] = _mm256_unpackhi_epi64(a[h], a[h + 2]);
        b[h + 2] = _mm256_unpacklo_epi64(a[h + 1], a[h + 3]);
        b[h + 3] = _mm256_unpackhi_epi64(a[h + 1], a[h + 3]);
    }
    for (int c = 0; c < 4; c++) {
        v[c] = _mm256_permute2x128_si256(b[c], b[c + 4], 0x20);
        v[c + 4] = _mm256_permute2x128_si256(b[c], b[c + 4], 0x31);
    }
}

/* sum over c < n of dot(u[c], activation vector c at x): after transpose8, lane i is group i;
 * sg (signed types) moves the weight signs onto the activations */
ALWAYS __m256i dot_run(const __m256i *u, const __m256i *sg, const int8_t *x, const int n) {
    __m256i isum[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};  /* 8: two short chains */
    for (int c = 0; c < n; c++) {
        __m256i xv = load32(x + 32 * c);
        if (sg) xv = _mm256_sign_epi8(xv, sg[c]);
        isum[n == 8 && c & 1] = dot_acc(isum[n == 8 && c & 1], u[c], xv);
    }
    return _mm256_add_epi32(isum[0], isum[1]);
}

/* Per-row pointers into the activations for rows t0..t0+NT-1 */
#define ACT_ROWS(block)                                                                         \
    const int k = a->k, nb = k / (block);                                                       \
    const int8_t *xq[MAX_NT], *xi[MAX_NT];                                                      \
    const float *xd[MAX_NT];                                                                    \
    for (int t = 0; t < NT; t++) {                                                              \
        xq[t] = a->qs + (size_t)(t0 + t) * k;                                                   \
        xi[t] = a->qsi + (size_t)(t0 + t) * k;                                                  \
        (void)xq[t];                                                                            \
        (void)xi[t];                                                                            \
        xd[t] = a->d + (size_t)(t0 + t) * nb;                                                   \
    }

/* ------------------------------------------------------------------ 32-value block types */

/* Decode one block: codes u (unsigned), sign source sg (signed types only), scale d and the
 * per-block additive term m (value = d * code + m for unsigned types). */
ALWAYS void decode32(const int QT, const uint8_t *b, __m256i *u, __m256i *sg, float *d, float *m) {
    switch (QT) {
    case QT_Q8_0:
        *sg = load32(b + 2);
        *u = _mm256_sign_epi8(*sg, *sg);
        *d = fp16(b);
        *m = 0.0f;
        break;
    case QT_IQ4_NL:
        *sg = _mm256_shuffle_epi8(iq4_grid(), nibbles32(b + 2));
        *u = _mm256_sign_epi8(*sg, *sg);
        *d = fp16(b);
        *m = 0.0f;
        break;
    case QT_Q4_0:
        *u = nibbles32(b + 2);
        *d = fp16(b);
        *m = -8.0f * *d;
        break;
    case QT_Q4_1:
        *u = nibbles32(b + 4);
        *d = fp16(b);
        *m = fp16(b + 2);
        break;
    case QT_Q5_0:
        *u = _mm256_or_si256(nibbles32(b + 6), fifth_bits(rd_u32(b + 2)));
        *d = fp16(b);
        *m = -16.0f * *d;
        break;
    case QT_Q5_1:
        *u = _mm256_or_si256(nibbles32(b + 8), fifth_bits(rd_u32(b + 4)));
        *d = fp16(b);
        *m = fp16(b + 2);
        break;
    }
}

#define SIGNED32(QT) ((QT) == QT_Q8_0 || (QT) == QT_IQ4_NL)

/* 8 fp16 fields `stride` bytes apart -> 8 floats */
ALWAYS __m256 halves8(const uint8_t *p, int stride) {
    return _mm256_cvtph_ps(_mm_setr_epi16((short)rd_u16(p), (short)rd_u16(p + stride), (short)rd_u16(p + 2 * stride),
                                          (short)rd_u16(p + 3 * stride), (short)rd_u16(p + 4 * stride),
                                          (short)rd_u16(p + 5 * stride), (short)rd_u16(p + 6 * stride),
                                          (short)rd_u16(p + 7 * stride)));
}

ALWAYS __m256 lane(__m256 v, int j) { return _mm256_permutevar8x32_ps(v, _mm256_set1_epi32(j)); }

/* Eight blocks at a time, transposed: lane i of each row's integer sum is block i, so the 8
 * weight scales times the 8 activation scales are one vector multiply and one FMA per row.
 * The per-block additive terms are one vector FMA of the 8 block mins with the activation
 * block sums; signed types (Q8_0, IQ4_NL) count as codes w + 128 with min -128 d: with
 * OFFSET_CODES (vpdpbusd takes any u8) those codes go in as they are, with no per-row sign
 * moves; without it (maddubs would saturate) the sign-moved sum gets 128 * the activation
 * sums added, the same integers. A tail of fewer than 8 blocks uses scalar scales. */
ALWAYS void row32(const int QT, const int type_size, const uint8_t *row, const acts *a, int t0,
                  const int NT, float *res) {
    ACT_ROWS(32)
    __m256 acc[MAX_NT];
    float accm[MAX_NT];
    const float *xs[MAX_NT];
    const int32_t *sums[MAX_NT];
    for (int t = 0; t < NT; t++) {
        acc[t] = _mm256_setzero_ps();
        accm[t] = 0.0f;
        xs[t] = a->s + (size_t)(t0 + t) * nb;
        sums[t] = a->sums + (size_t)(t0 + t) * nb;
        (void)sums[t];
    }
    const int has_min = !SIGNED32(QT);
    int b = 0;
    for (; b + 8 <= nb; b += 8) {
        const uint8_t *blk = row + (size_t)b * type_size;
        __m256 dv = halves8(blk, type_size), mv = _mm256_mul_ps(dv, _mm256_set1_ps(-128.0f));
        if (QT == QT_Q4_1 || QT == QT_Q5_1) mv = halves8(blk + 2, type_size);
        if (QT == QT_Q4_0) mv = _mm256_mul_ps(dv, _mm256_set1_ps(-8.0f));
        if (QT == QT_Q5_0) mv = _mm256_mul_ps(dv, _mm256_set1_ps(-16.0f));
        __m256i u[8], sg[8];
        for (int j = 0; j < 8; j++) {
            float unused_d, unused_m;
            sg[j] = _mm256_setzero_si256();
            decode32(QT, blk + (size_t)j * type_size, &u[j], &sg[j], &unused_d, &unused_m);
        }
        if (has_min) {
            transpose8(u);
        } else {
            transpose8(sg);
            for (int j = 0; j < 8; j++)
                u[j] = OFFSET_CODES ? _mm256_xor_si256(sg[j], _mm256_set1_epi8(-128)) : _mm256_sign_epi8(sg[j], sg[j]);
        }
        _Pragma("GCC unroll 8")
        for (int t = 0; t < NT; t++) {
            __m256i isum = dot_run(u, has_min || OFFSET_CODES ? NULL : sg, xi[t] + 32 * b, 8);
            if (!has_min && !OFFSET_CODES)  /* the same integers as the offset codes: + 128 * sums */
                isum = _mm256_add_epi32(isum, _mm256_slli_epi32(_mm256_loadu_si256((const __m256i *)(sums[t] + b)), 7));
            __m256 sv = _mm256_mul_ps(dv, _mm256_loadu_ps(xd[t] + b));
            acc[t] = _mm256_fmadd_ps(sv, _mm256_cvtepi32_ps(isum), acc[t]);
            acc[t] = _mm256_fmadd_ps(mv, _mm256_loadu_ps(xs[t] + b), acc[t]);
        }
    }
    for (; b < nb; b++) {
        __m256i u0, s0 = _mm256_setzero_si256();
        float d0, m0;
        decode32(QT, row + (size_t)b * type_size, &u0, &s0, &d0, &m0);
        for (int t = 0; t < NT; t++) {
            __m256i x0 = load32(xq[t] + 32 * b);
            if (!has_min) x0 = _mm256_sign_epi8(x0, s0);
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d0 * xd[t][b]), _mm256_cvtepi32_ps(dot_i32(u0, x0)), acc[t]);
            if (has_min) accm[t] += m0 * xs[t][b];
        }
    }
    for (int t = 0; t < NT; t++) res[t] = hsum8(acc[t]) + accm[t];
}

/* ------------------------------------------------------------------ 256-value super-blocks */

/* 16 int16 sums of 16 activations of super-block b, row t */
#define BSUMS(t, b) _mm256_loadu_si256((const __m256i *)(a->bsums + (size_t)(t0 + (t)) * (k / 16) + 16 * (b)))

/* Sub-block scales as a table of 8 int16 pairs (lane j = scale j twice), from 8 int32 scales;
 * pick1/pick2 broadcast one scale, or scales j and j+1 to the two 16-value halves. */
ALWAYS __m256i scale_table(__m256i sc32) {
    return _mm256_or_si256(_mm256_and_si256(sc32, _mm256_set1_epi32(0xffff)), _mm256_slli_epi32(sc32, 16));
}
ALWAYS __m256i pick1(__m256i table, int j) { return _mm256_permutevar8x32_epi32(table, _mm256_set1_epi32(j)); }
ALWAYS __m256i pick2(__m256i table, int j) {
    return _mm256_permutevar8x32_epi32(table, _mm256_setr_epi32(j, j, j, j, j + 1, j + 1, j + 1, j + 1));
}
/* 8 signed bytes -> a scale table */
ALWAYS __m256i scale_table_i8(const int8_t *p) {
    return scale_table(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}

/* Q4_K/Q5_K: eight 6-bit scales and mins out of 12 bytes, one byte each, with 32-bit word
 * operations: bytes 0-3 hold scales 0-3 and their top 2 bits the high bits of scales 4-7,
 * bytes 4-7 likewise for the mins, bytes 8-11 the low nibbles of scales (mins) 4-7. */
ALWAYS void k_scales(const uint8_t *s, uint64_t *sc, uint64_t *mn) {
    uint32_t w0 = rd_u32(s), w1 = rd_u32(s + 4), w2 = rd_u32(s + 8);
    uint32_t sc_hi = (w2 & 0x0f0f0f0f) | ((w0 >> 2) & 0x30303030);
    uint32_t mn_hi = ((w2 >> 4) & 0x0f0f0f0f) | ((w1 >> 2) & 0x30303030);
    *sc = (w0 & 0x3f3f3f3f) | (uint64_t)sc_hi << 32;
    *mn = (w1 & 0x3f3f3f3f) | (uint64_t)mn_hi << 32;
}

/* Q4_K (HQ = 0) and Q5_K (HQ = 1). 32-byte chunk c of qs: low nibbles are sub-block 2c,
 * high nibbles 2c+1; transposed, lane j of a row's sum is sub-block j, so d * scale j and
 * -dmin * min j are per-block float vectors shared by all rows, the mins meeting the
 * activations' 32-value sums (acts.s); Q5_K's bit j of qh[l] is the fifth bit of value l of sub-block j,
 * brought to bit 4 by shifting a running copy of qh right once per sub-block. */
ALWAYS void row_q45k(const int HQ, const uint8_t *row, const acts *a, int t0, const int NT, float *res) {
    ACT_ROWS(256)
    const int type_size = HQ ? 176 : 144;
    const __m256i low4 = _mm256_set1_epi8(15), bit4 = _mm256_set1_epi8(0x10);
    __m256 acc[MAX_NT];
    const float *xs[MAX_NT];
    for (int t = 0; t < NT; t++) {
        acc[t] = _mm256_setzero_ps();
        xs[t] = a->s + (size_t)(t0 + t) * (k / 32);
    }
    for (int b = 0; b < nb; b++) {
        const uint8_t *blk = row + (size_t)b * type_size, *qs = blk + (HQ ? 48 : 16);
        uint64_t sc8, mn8;
        k_scales(blk + 4, &sc8, &mn8);
        const __m256i sc32 = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)sc8));
        __m256i qh = HQ ? load32(blk + 16) : _mm256_setzero_si256();
        __m256i u[8];
        for (int c = 0; c < 4; c++) {
            __m256i raw = load32(qs + 32 * c);
            __m256i lo = _mm256_and_si256(raw, low4), hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low4);
            if (HQ) {
                lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_slli_epi16(qh, 4), bit4));
                qh = _mm256_srli_epi16(qh, 1);
                hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_slli_epi16(qh, 4), bit4));
                qh = _mm256_srli_epi16(qh, 1);
            }
            u[2 * c] = lo;
            u[2 * c + 1] = hi;
        }
        transpose8(u);
        const __m256 scales = _mm256_mul_ps(_mm256_set1_ps(fp16(blk)), _mm256_cvtepi32_ps(sc32));
        const __m256 mins = _mm256_mul_ps(_mm256_set1_ps(-fp16(blk + 2)),
                                          _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)mn8))));
        _Pragma("GCC unroll 8")
        for (int t = 0; t < NT; t++) {
            __m256 dot = _mm256_cvtepi32_ps(dot_run(u, NULL, xi[t] + 256 * b, 8));
            acc[t] = _mm256_fmadd_ps(mins, _mm256_loadu_ps(xs[t] + 8 * b), acc[t]);
            acc[t] = _mm256_fmadd_ps(_mm256_broadcast_ss(xd[t] + b), _mm256_mul_ps(scales, dot), acc[t]);
        }
    }
    for (int t = 0; t < NT; t++) res[t] = hsum8(acc[t]);
}

/* Q6_K: per 128-value half, ql bytes l and l+32 give the low nibbles of values l, l+32
 * (low nibble) and l+64, l+96 (high nibble); qh[l] bit pairs 0-1, 2-3, 4-5, 6-7 are their top
 * bits, masked into bits 4-5 in place. Codes are 0..63; the -32 goes through the bsums.
 * Vector g holds values 32g..32g+31, 16-value sub-blocks 2g and 2g+1; transposed, vectors 0-3
 * meet sub-block 2i in lane i, vectors 4-7 sub-block 2i+1. */
ALWAYS void row_q6k(const uint8_t *row, const acts *a, int t0, const int NT, float *res) {
    ACT_ROWS(256)
    const __m256i low4 = _mm256_set1_epi8(15), top2 = _mm256_set1_epi8(0x30);
    __m256 acc[MAX_NT];
    for (int t = 0; t < NT; t++) acc[t] = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const uint8_t *blk = row + (size_t)b * 210;
        const int8_t *sc = (const int8_t *)(blk + 192);
        const __m256i scales = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)sc));
        const __m256i sc_even = _mm256_srai_epi32(_mm256_slli_epi32(scales, 16), 16);
        const __m256i sc_odd = _mm256_srai_epi32(scales, 16);
        __m256i u[8];
        for (int h = 0; h < 2; h++) {
            __m256i l0 = load32(blk + 64 * h), l1 = load32(blk + 64 * h + 32), hh = load32(blk + 128 + 32 * h);
            u[4 * h] = _mm256_or_si256(_mm256_and_si256(l0, low4), _mm256_and_si256(_mm256_slli_epi16(hh, 4), top2));
            u[4 * h + 1] = _mm256_or_si256(_mm256_and_si256(l1, low4), _mm256_and_si256(_mm256_slli_epi16(hh, 2), top2));
            u[4 * h + 2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), low4), _mm256_and_si256(hh, top2));
            u[4 * h + 3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), low4),
                                           _mm256_and_si256(_mm256_srli_epi16(hh, 2), top2));
        }
        transpose8(u);
        float d = fp16(blk + 208);
        _Pragma("GCC unroll 8")
        for (int t = 0; t < NT; t++) {
            const int8_t *x = xi[t] + 256 * b;
            __m256i even = _mm256_mullo_epi32(dot_run(u, NULL, x, 4), sc_even);
            __m256i odd = _mm256_mullo_epi32(dot_run(u + 4, NULL, x + 128, 4), sc_odd);
            __m256i offset = _mm256_slli_epi32(_mm256_madd_epi16(BSUMS(t, b), scales), 5);
            __m256i total = _mm256_sub_epi32(_mm256_add_epi32(even, odd), offset);
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * xd[t][b]), _mm256_cvtepi32_ps(total), acc[t]);
        }
    }
    for (int t = 0; t < NT; t++) res[t] = hsum8(acc[t]);
}

/* Q2_K (Q3 = 0) and Q3_K (Q3 = 1): 2-bit fields s of qs byte h*32+l are value 128h+32s+l.
 * Q3_K adds hmask bit 4h+s as bit 2 (set = +0, clear = -4: codes 0..7 minus 4 via bsums). */
ALWAYS void row_q23k(const int Q3, const uint8_t *row, const acts *a, int t0, const int NT, float *res) {
    ACT_ROWS(256)
    const int type_size = Q3 ? 110 : 84;
    const __m256i low2 = _mm256_set1_epi8(3), bit2 = _mm256_set1_epi8(4);
    __m256 acc[MAX_NT];
    for (int t = 0; t < NT; t++) acc[t] = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const uint8_t *blk = row + (size_t)b * type_size, *qs = blk + (Q3 ? 32 : 16);
        int8_t sc[16];
        uint8_t mn[16];
        if (Q3) {
            const uint8_t *s = blk + 96;
            for (int g = 0; g < 16; g++) {
                int low = g < 8 ? s[g] & 15 : s[g - 8] >> 4;
                sc[g] = (int8_t)((low | (((s[8 + g % 4] >> (2 * (g / 4))) & 3) << 4)) - 32);
            }
        } else {
            for (int g = 0; g < 16; g++) {
                sc[g] = (int8_t)(blk[g] & 15);
                mn[g] = blk[g] >> 4;
            }
        }
        const __m256i tables[2] = {scale_table_i8(sc), scale_table_i8(sc + 8)};
        __m256i hm = Q3 ? load32(blk) : _mm256_setzero_si256();
        __m256i isum[MAX_NT];
        for (int t = 0; t < NT; t++) isum[t] = _mm256_setzero_si256();
        for (int h = 0; h < 2; h++) {
            __m256i raw = load32(qs + 32 * h);
            for (int s = 0; s < 4; s++) {
                __m256i q = _mm256_and_si256(_mm256_srli_epi16(raw, 2 * s), low2);
                if (Q3) {
                    q = _mm256_or_si256(q, _mm256_and_si256(_mm256_slli_epi16(hm, 2), bit2));
                    hm = _mm256_srli_epi16(hm, 1);
                }
                __m256i scv = pick2(tables[h], 2 * s);
                for (int t = 0; t < NT; t++)
                    isum[t] = dot_acc_sc(isum[t], q, load32(xq[t] + 256 * b + 128 * h + 32 * s), scv);
            }
        }
        float d = fp16(blk + (Q3 ? 108 : 80));
        if (Q3) {
            __m256i scales = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)sc));
            for (int t = 0; t < NT; t++) {
                __m256i offset = _mm256_slli_epi32(_mm256_madd_epi16(BSUMS(t, b), scales), 2);
                __m256i total = _mm256_sub_epi32(isum[t], offset);
                acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * xd[t][b]), _mm256_cvtepi32_ps(total), acc[t]);
            }
        } else {
            __m256i mins = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)mn));
            float dmin = fp16(blk + 82);
            for (int t = 0; t < NT; t++) {
                __m256i msum = _mm256_madd_epi16(BSUMS(t, b), mins);
                acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * xd[t][b]), _mm256_cvtepi32_ps(isum[t]), acc[t]);
                acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(-dmin * xd[t][b]), _mm256_cvtepi32_ps(msum), acc[t]);
            }
        }
    }
    for (int t = 0; t < NT; t++) res[t] = hsum8(acc[t]);
}

/* IQ4_XS: eight 32-value sub-blocks laid out as IQ4_NL with signed 6-bit scales ls - 32 */
ALWAYS void row_iq4xs(const uint8_t *row, const acts *a, int t0, const int NT, float *res) {
    ACT_ROWS(256)
    const __m256i grid = iq4_grid();
    __m256 acc[MAX_NT];
    for (int t = 0; t < NT; t++) acc[t] = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const uint8_t *blk = row + (size_t)b * 136;
        const unsigned sh = rd_u16(blk + 2);
        int8_t ls[8];
        for (int j = 0; j < 8; j++)
            ls[j] = (int8_t)((((blk[4 + j / 2] >> (4 * (j % 2))) & 15) | (((sh >> (2 * j)) & 3) << 4)) - 32);
        const __m256i table = scale_table_i8(ls);
        __m256i isum[MAX_NT];
        for (int t = 0; t < NT; t++) isum[t] = _mm256_setzero_si256();
        for (int j = 0; j < 8; j++) {
            __m256i scv = pick1(table, j);
            __m256i v = _mm256_shuffle_epi8(grid, nibbles32(blk + 8 + 16 * j));
            __m256i u = _mm256_sign_epi8(v, v);
            for (int t = 0; t < NT; t++) {
                __m256i x = _mm256_sign_epi8(load32(xq[t] + 256 * b + 32 * j), v);
                isum[t] = dot_acc_sc(isum[t], u, x, scv);
            }
        }
        float d = fp16(blk);
        for (int t = 0; t < NT; t++)
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * xd[t][b]), _mm256_cvtepi32_ps(isum[t]), acc[t]);
    }
    for (int t = 0; t < NT; t++) res[t] = hsum8(acc[t]);
}

/* ------------------------------------------------------------------ float weights */

ALWAYS __m256 load_w8(const int QT, const uint8_t *row, int i) {
    if (QT == QT_F32) return _mm256_loadu_ps((const float *)row + i);
    __m128i h = _mm_loadu_si128((const __m128i *)(row + 2 * (size_t)i));
    if (QT == QT_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

ALWAYS float load_w1(const int QT, const uint8_t *row, int i) {
    if (QT == QT_F32) return ((const float *)row)[i];
    return QT == QT_F16 ? _cvtsh_ss(rd_u16(row + 2 * i)) : bf16_to_float(rd_u16(row + 2 * i));
}

/* 16 values per step into a product pair, then one add on the accumulator (short chain) */
ALWAYS void row_float(const int QT, const uint8_t *row, const acts *a, int t0, const int NT, float *res) {
    const int k = a->k;
    const float *x[MAX_NT];
    __m256 acc[MAX_NT];
    for (int t = 0; t < NT; t++) {
        x[t] = a->f32 + (size_t)(t0 + t) * k;
        acc[t] = _mm256_setzero_ps();
    }
    int i = 0;
    for (; i + 16 <= k; i += 16) {
        __m256 w0 = load_w8(QT, row, i), w1 = load_w8(QT, row, i + 8);
        for (int t = 0; t < NT; t++) {
            __m256 f = _mm256_mul_ps(w0, _mm256_loadu_ps(x[t] + i));
            acc[t] = _mm256_add_ps(acc[t], _mm256_fmadd_ps(w1, _mm256_loadu_ps(x[t] + i + 8), f));
        }
    }
    for (; i + 8 <= k; i += 8) {
        __m256 w0 = load_w8(QT, row, i);
        for (int t = 0; t < NT; t++) acc[t] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x[t] + i), acc[t]);
    }
    for (int t = 0; t < NT; t++) res[t] = hsum8(acc[t]);
    for (; i < k; i++) {
        float w = load_w1(QT, row, i);
        for (int t = 0; t < NT; t++) res[t] += w * x[t][i];
    }
}

/* ------------------------------------------------------------------ kernel entry points */

/* NAME's kernel: loops rows r0..r1-1 calling ROW(row, a, t0, NT, res) with NT constant */
#define KERNEL(NAME, ROW)                                                                       \
    ALWAYS void NAME##_rows(const uint8_t *w, size_t row_bytes, int r0, int r1, const acts *a,  \
                            int t0, const int NT, float *out, size_t ldo) {                     \
        for (int r = r0; r < r1; r++) {                                                         \
            const uint8_t *row = w + (size_t)r * row_bytes;                                     \
            float res[MAX_NT];                                                                  \
            ROW;                                                                                \
            for (int t = 0; t < NT; t++) out[(size_t)t * ldo + (r - r0)] = res[t];              \
        }                                                                                       \
    }                                                                                           \
    static void KNAME(NAME)(const uint8_t *w, size_t row_bytes, int r0, int r1, const acts *a,  \
                            int t0, int nt, float *out, size_t ldo) {                           \
        switch (nt) {                                                                           \
        case 1: NAME##_rows(w, row_bytes, r0, r1, a, t0, 1, out, ldo); break;                   \
        case 2: NAME##_rows(w, row_bytes, r0, r1, a, t0, 2, out, ldo); break;                   \
        case 3: NAME##_rows(w, row_bytes, r0, r1, a, t0, 3, out, ldo); break;                   \
        case 4: NAME##_rows(w, row_bytes, r0, r1, a, t0, 4, out, ldo); break;                   \
        case 5: NAME##_rows(w, row_bytes, r0, r1, a, t0, 5, out, ldo); break;                   \
        case 6: NAME##_rows(w, row_bytes, r0, r1, a, t0, 6, out, ldo); break;                   \
        case 7: NAME##_rows(w, row_bytes, r0, r1, a, t0, 7, out, ldo); break;                   \
        default: NAME##_rows(w, row_bytes, r0, r1, a, t0, 8, out, ldo); break;                  \
        }                                                                                       \
    }

KERNEL(dot_f32, row_float(QT_F32, row, a, t0, NT, res))
KERNEL(dot_f16, row_float(QT_F16, row, a, t0, NT, res))
KERNEL(dot_bf16, row_float(QT_BF16, row, a, t0, NT, res))
KERNEL(dot_q8_0, row32(QT_Q8_0, 34, row, a, t0, NT, res))
KERNEL(dot_q4_0, row32(QT_Q4_0, 18, row, a, t0, NT, res))
KERNEL(dot_q4_1, row32(QT_Q4_1, 20, row, a, t0, NT, res))
KERNEL(dot_q5_0, row32(QT_Q5_0, 22, row, a, t0, NT, res))
KERNEL(dot_q5_1, row32(QT_Q5_1, 24, row, a, t0, NT, res))
KERNEL(dot_iq4_nl, row32(QT_IQ4_NL, 18, row, a, t0, NT, res))
KERNEL(dot_q2_k, row_q23k(0, row, a, t0, NT, res))
KERNEL(dot_q3_k, row_q23k(1, row, a, t0, NT, res))
KERNEL(dot_q4_k, row_q45k(0, row, a, t0, NT, res))
KERNEL(dot_q5_k, row_q45k(1, row, a, t0, NT, res))
KERNEL(dot_q6_k, row_q6k(row, a, t0, NT, res))
KERNEL(dot_iq4_xs, row_iq4xs(row, a, t0, NT, res))

#define KERNEL_TABLE                                                                            \
    {                                                                                           \
        [QT_F32] = KNAME(dot_f32), [QT_F16] = KNAME(dot_f16), [QT_BF16] = KNAME(dot_bf16),      \
        [QT_Q8_0] = KNAME(dot_q8_0), [QT_Q4_0] = KNAME(dot_q4_0), [QT_Q4_1] = KNAME(dot_q4_1),  \
        [QT_Q5_0] = KNAME(dot_q5_0), [QT_Q5_1] = KNAME(dot_q5_1),                               \
        [QT_IQ4_NL] = KNAME(dot_iq4_nl), [QT_Q2_K] = KNAME(dot_q2_k),                           \
        [QT_Q3_K] = KNAME(dot_q3_k), [QT_Q4_K] = KNAME(dot_q4_k), [QT_Q5_K] = KNAME(dot_q5_k),  \
        [QT_Q6_K] = KNAME(dot_q6_k), [QT_IQ4_XS] = KNAME(dot_iq4_xs),                           \
    }
