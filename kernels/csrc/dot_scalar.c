/* Portable dot products: the fallback on CPUs without AVX2, and on other architectures.
 * Integer types decode each block once (decode.c) and reuse it for all nt activation rows. */
#include "decode.h"

#define FLOAT_CHUNK 256

static void float_row(int qtype, const uint8_t *row, int i0, int n, float *buf) {
    for (int i = 0; i < n; i++) {
        const uint8_t *p = row + (size_t)(i0 + i) * (qtype == QT_F32 ? 4 : 2);
        if (qtype == QT_F32) memcpy(&buf[i], p, 4);
        else if (qtype == QT_F16) buf[i] = half_to_float(rd_u16(p));
        else buf[i] = bf16_to_float(rd_u16(p));
    }
}

static void dot_float(int qtype, const uint8_t *w, size_t row_bytes, int r0, int r1, const acts *a,
                      int t0, int nt, float *out, size_t ldo) {
    const int k = a->k;
    float buf[FLOAT_CHUNK];
    for (int r = r0; r < r1; r++) {
        const uint8_t *row = w + (size_t)r * row_bytes;
        float acc[MAX_NT] = {0};
        for (int i0 = 0; i0 < k; i0 += FLOAT_CHUNK) {
            int n = k - i0 < FLOAT_CHUNK ? k - i0 : FLOAT_CHUNK;
            float_row(qtype, row, i0, n, buf);
            for (int t = 0; t < nt; t++) {
                const float *x = a->f32 + (size_t)(t0 + t) * k + i0;
                float s = acc[t];
                for (int i = 0; i < n; i++) s += buf[i] * x[i];
                acc[t] = s;
            }
        }
        for (int t = 0; t < nt; t++) out[(size_t)t * ldo + (r - r0)] = acc[t];
    }
}

static void dot_int(int qtype, const uint8_t *w, size_t row_bytes, int r0, int r1, const acts *a,
                    int t0, int nt, float *out, size_t ldo) {
    const int k = a->k, block = QTYPES[qtype].block_size, nb = k / block;
    const int type_size = QTYPES[qtype].type_size;
    int_block blk;
    for (int r = r0; r < r1; r++) {
        const uint8_t *row = w + (size_t)r * row_bytes;
        float acc[MAX_NT] = {0};
        for (int b = 0; b < nb; b++) {
            decode_block(qtype, row + (size_t)b * type_size, &blk);
            for (int t = 0; t < nt; t++) {
                const int8_t *x = a->qs + (size_t)(t0 + t) * k + (size_t)b * block;
                int isc = 0, imin = 0;
                for (int g = 0; g < block / blk.group; g++) {
                    int dot = 0, sum = 0;
                    for (int i = g * blk.group; i < (g + 1) * blk.group; i++) {
                        dot += blk.q[i] * x[i];
                        sum += x[i];
                    }
                    isc += blk.sc[g] * dot;
                    imin += blk.m[g] * sum;
                }
                float dx = a->d[(size_t)(t0 + t) * nb + b];
                acc[t] += dx * (blk.d * (float)isc - blk.dmin * (float)imin);
            }
        }
        for (int t = 0; t < nt; t++) out[(size_t)t * ldo + (r - r0)] = acc[t];
    }
}

#define SCALAR(name, fn, qt)                                                                     \
    static void name(const uint8_t *w, size_t row_bytes, int r0, int r1, const acts *a, int t0,  \
                     int nt, float *out, size_t ldo) {                                           \
        fn(qt, w, row_bytes, r0, r1, a, t0, nt, out, ldo);                                       \
    }

SCALAR(dot_f32, dot_float, QT_F32)
SCALAR(dot_f16, dot_float, QT_F16)
SCALAR(dot_bf16, dot_float, QT_BF16)
SCALAR(dot_q8_0, dot_int, QT_Q8_0)
SCALAR(dot_q4_0, dot_int, QT_Q4_0)
SCALAR(dot_q4_1, dot_int, QT_Q4_1)
SCALAR(dot_q5_0, dot_int, QT_Q5_0)
SCALAR(dot_q5_1, dot_int, QT_Q5_1)
SCALAR(dot_iq4_nl, dot_int, QT_IQ4_NL)
SCALAR(dot_q2_k, dot_int, QT_Q2_K)
SCALAR(dot_q3_k, dot_int, QT_Q3_K)
SCALAR(dot_q4_k, dot_int, QT_Q4_K)
SCALAR(dot_q5_k, dot_int, QT_Q5_K)
SCALAR(dot_q6_k, dot_int, QT_Q6_K)
SCALAR(dot_iq4_xs, dot_int, QT_IQ4_XS)

const kernel_set KERNELS_SCALAR = {
    "scalar",
    {
        [QT_F32] = dot_f32, [QT_F16] = dot_f16, [QT_BF16] = dot_bf16,
        [QT_Q8_0] = dot_q8_0, [QT_Q4_0] = dot_q4_0, [QT_Q4_1] = dot_q4_1,
        [QT_Q5_0] = dot_q5_0, [QT_Q5_1] = dot_q5_1, [QT_IQ4_NL] = dot_iq4_nl,
        [QT_Q2_K] = dot_q2_k, [QT_Q3_K] = dot_q3_k, [QT_Q4_K] = dot_q4_k,
        [QT_Q5_K] = dot_q5_k, [QT_Q6_K] = dot_q6_k, [QT_IQ4_XS] = dot_iq4_xs,
    },
};
