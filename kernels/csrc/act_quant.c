#define _POSIX_C_SOURCE 200809L
/* Per-row symmetric int8 quantization of activations, as llama.cpp's Q8_0 / Q8_K:
 * d = absmax / 127 per block, q = round-to-nearest-even(x / d). The block value sums let the
 * kernels apply weight offsets (Q4_0's -8, Q4_K's mins) once per block instead of per value. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "act_quant.h"

static void *aligned(size_t bytes) {
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes ? bytes : 64)) return NULL;
    return p;
}

acts *acts_alloc(enum act_kind kind, int T, int k) {
    acts *a = calloc(1, sizeof *a);
    if (!a) return NULL;
    a->kind = kind;
    a->k = k;
    if (kind == ACT_F32) return a;
    int block = kind == ACT_Q8_32 ? 32 : 256;
    size_t n = (size_t)T * k;
    a->qs = aligned(n);
    a->qsi = aligned(n);
    a->d = aligned(n / block * sizeof(float));
    a->s = aligned(n / 32 * sizeof(float));
    if (kind == ACT_Q8_32) a->sums = aligned(n / 32 * sizeof(int32_t));
    else a->bsums = aligned(n / 16 * sizeof(int16_t));
    if (!a->qs || !a->qsi || !a->d || !a->s || (kind == ACT_Q8_32 ? !a->sums : !a->bsums)) {
        acts_free(a);
        return NULL;
    }
    return a;
}

void acts_free(acts *a) {
    if (!a) return;
    free((void *)a->qs);
    free((void *)a->qsi);
    free((void *)a->d);
    free((void *)a->s);
    free((void *)a->bsums);
    free((void *)a->sums);
    free(a);
}

/* one block of n values: returns the scale, writes the codes. A NaN or infinity in the block
 * makes the scale NaN, so it reaches the output as in float arithmetic. */
static float quantize_block(const float *x, int8_t *q, int n) {
    float amax = 0.0f;
    int finite = 1;
    for (int i = 0; i < n; i++) {
        amax = fmaxf(amax, fabsf(x[i]));
        finite &= isfinite(x[i]);
    }
    if (!finite) {
        memset(q, 0, (size_t)n);
        return NAN;
    }
    float d = amax / 127.0f, id = amax > 0.0f ? 127.0f / amax : 0.0f;
    for (int i = 0; i < n; i++) q[i] = (int8_t)lrintf(x[i] * id);
    return d;
}

/* the interleaved copy: lane i of 32-byte vector c = values 32i + 4c .. +3 of each whole 256, so
 * that one vector's lanes meet eight different 32-value blocks (see dot_x86.h) */
static void interleave_row(const int8_t *q, int8_t *out, int k) {
    int full = k / 256 * 256;
    for (int base = 0; base < full; base += 256)
        for (int c = 0; c < 8; c++)
            for (int i = 0; i < 8; i++) memcpy(out + base + 32 * c + 4 * i, q + base + 32 * i + 4 * c, 4);
    memcpy(out + full, q + full, (size_t)(k - full));
}

void acts_quantize(acts *a, const float *x, int t0, int t1) {
    const int k = a->k, block = a->kind == ACT_Q8_32 ? 32 : 256, nb = k / block;
    for (int t = t0; t < t1; t++) {
        const float *xr = x + (size_t)t * k;
        int8_t *qr = (int8_t *)a->qs + (size_t)t * k;
        for (int b = 0; b < nb; b++) {
            int8_t *q = qr + b * block;
            float d = quantize_block(xr + b * block, q, block);
            ((float *)a->d)[(size_t)t * nb + b] = d;
            if (a->kind == ACT_Q8_32) {
                int sum = 0;
                for (int i = 0; i < 32; i++) sum += q[i];
                ((float *)a->s)[(size_t)t * nb + b] = d * (float)sum;
                ((int32_t *)a->sums)[(size_t)t * nb + b] = sum;
            } else {
                int16_t *bs = (int16_t *)a->bsums + (size_t)t * (k / 16) + b * 16;
                for (int g = 0; g < 16; g++) {
                    int sum = 0;
                    for (int i = 0; i < 16; i++) sum += q[g * 16 + i];
                    bs[g] = (int16_t)sum;
                }
                for (int j = 0; j < 8; j++)
                    ((float *)a->s)[(size_t)t * (k / 32) + b * 8 + j] = d * (float)(bs[2 * j] + bs[2 * j + 1]);
            }
        }
        interleave_row(qr, (int8_t *)a->qsi + (size_t)t * k, k);
    }
}
