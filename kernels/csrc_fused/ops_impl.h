/* The fused ops, written once and compiled per instruction set: the including file defines
 * OPS_SUFFIX, OPS_TABLE and OPS_NAME (and may set a target pragma first).
 *
 * Loops are plain C that the compiler vectorises at -O3 (-fno-trapping-math lets it if-convert
 * the float compares). The float operations follow the numpy reference (kernels/numpy_backend.py,
 * engine/qwen35.py) except for the order of reductions, the delta-rule output (see gdn_head) and
 * exp (vexp); fp contraction is off (-std=c11), so both variants give the same bits.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fused.h"

#define LANES 8 /* independent partial sums: lets the compiler vectorise reductions without -ffast-math */

static inline float OPS_SUFFIX(dot)(const float *a, const float *b, int64_t n) {
    float acc[LANES] = {0};
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int l = 0; l < LANES; l++) acc[l] += a[i + l] * b[i + l];
    float tail = 0.0f;
    for (; i < n; i++) tail += a[i] * b[i];
    return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail;
}

/* e^x within a few ulp, in branch-free code the compiler vectorises (libm's expf is one call per
 * element): x = n ln2 + r with |r| <= ln2/2, e^r by its degree-7 Taylor polynomial, 2^n built in
 * the exponent bits. x is clamped to [-87, 88] so 2^n stays normal: e^x saturates at e^-87 and
 * e^88 (1.6e-38 and 1.7e38), which no use here can tell from 0 and infinity. NaN stays NaN. */
static inline float OPS_SUFFIX(vexp)(float x) {
    const float shifter = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer, kept in the low bits */
    const uint32_t shifter_bits = 0x4B400000u;
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    const float t = x * 1.44269504f + shifter;
    const float n = t - shifter;
    const float r = (x - n * 0.693145751953125f) - n * 1.428606765330187e-6f; /* ln2 split: n * hi is exact */
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    uint32_t bits;
    memcpy(&bits, &t, sizeof bits);
    bits = (bits - shifter_bits + 127u) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

static inline float OPS_SUFFIX(sigmoid)(float x) { return 1.0f / (1.0f + OPS_SUFFIX(vexp)(-x)); }

static inline float OPS_SUFFIX(silu)(float x) { return OPS_SUFFIX(sigmoid)(x) * x; }

/* log(1 + e^x) written as numpy's logaddexp(0, x), so large |x| neither overflows nor loses bits */
static inline float OPS_SUFFIX(softplus)(float x) {
    return x > 0.0f ? x + log1pf(expf(-x)) : log1pf(expf(x));
}

/* out = x / sqrt(mean(x^2) + eps) * w over one row of n */
static inline void OPS_SUFFIX(rms_row)(const float *x, const float *w, float *out, int64_t n, float eps) {
    float scale = sqrtf(OPS_SUFFIX(dot)(x, x, n) * (float)(1.0 / (double)n) + eps);
    for (int64_t j = 0; j < n; j++) out[j] = x[j] / scale * w[j];
}

/* x <- x / sqrt(sum x^2 + eps) * post (the HF l2norm; post = 1 or the 1/sqrt(d) query scale) */
static inline void OPS_SUFFIX(l2norm_row)(float *x, int64_t n, float eps, float post) {
    float norm = sqrtf(OPS_SUFFIX(dot)(x, x, n) + eps);
    for (int64_t j = 0; j < n; j++) x[j] = x[j] / norm;
    if (post != 1.0f)
        for (int64_t j = 0; j < n; j++) x[j] *= post;
}

/* ---- Gated DeltaNet ---------------------------------------------------------------------- */

/* SiLU(depthwise conv) of one token: rows[i] is the input i taps back from the newest (rows[K-1]). */
static inline __attribute__((always_inline)) void OPS_SUFFIX(conv_token)(float *out, const float *const *rows,
                                                                       const float *w, int64_t C, int64_t K) {
    for (int64_t ch = 0; ch < C; ch++) {
        float acc = rows[0][ch] * w[ch * K];
        for (int64_t i = 1; i < K; i++) acc += rows[i][ch] * w[ch * K + i];
        out[ch] = OPS_SUFFIX(silu)(acc);
    }
}

/* Depthwise causal conv + SiLU of the qkv columns into mixed [T, C]; then the conv state
 * becomes the last K-1 rows of (state | inputs). Row r of that padded sequence is a state row
 * for r < K-1, else token r-(K-1)'s qkv columns. rows: scratch for K pointers. */
static void OPS_SUFFIX(gdn_conv)(const gdn_call *c, int64_t C, int64_t W, const float **rows, float *mixed) {
    const int64_t K = c->K, T = c->T;
#define PADDED_ROW(r) ((r) < K - 1 ? c->conv_state + (r) * C : c->proj + ((r) - (K - 1)) * W)
    for (int64_t t = 0; t < T; t++) {
        for (int64_t i = 0; i < K; i++) rows[i] = PADDED_ROW(t + i);
        if (K == 4) /* every Qwen3.5 model: a constant tap count lets the compiler vectorise over channels */
            OPS_SUFFIX(conv_token)(mixed + t * C, rows, c->conv_w, C, 4);
        else
            OPS_SUFFIX(conv_token)(mixed + t * C, rows, c->conv_w, C, K);
    }
    /* ascending i reads row T+i before any write reaches it (writes go to rows i < T+i) */
    for (int64_t i = 0; i < K - 1 && T > 0; i++) memmove(c->conv_state + i * C, PADDED_ROW(T + i), (size_t)C * sizeof(float));
#undef PADDED_ROW
}

/* One V head over all T tokens, its state kept in cache throughout:
 * S <- e^g S; delta = beta (v - S^T k); S <- S + k delta^T; o = S^T q.
 * Written as one read-only pass (S^T k, S^T q) and one update pass, using
 * o = e^g S_old^T q + (k . q) delta, so the state moves through memory twice instead of four times. */
static void OPS_SUFFIX(gdn_head)(const gdn_call *c, int64_t h, const float *mixed, int64_t C, const float *beta,
                                 const float *decay, float *kS, float *qS) {
    const int64_t d = c->d, kd = c->hk * d, vd = c->hv * d, kh = h % c->hk;
    float *S = c->ssm_state + h * d * d;
    for (int64_t t = 0; t < c->T; t++) {
        const float *q = mixed + t * C + kh * d, *k = mixed + t * C + kd + kh * d, *v = mixed + t * C + 2 * kd + h * d;
        const float e = decay[t * c->hv + h], b = beta[t * c->hv + h], kq = OPS_SUFFIX(dot)(k, q, d);
        float *o = c->y + t * vd + h * d, *delta = kS;
        for (int64_t j = 0; j < d; j++) kS[j] = qS[j] = 0.0f;
        for (int64_t i = 0; i < d; i++) {
            const float *s = S + i * d, ki = k[i], qi = q[i];
            for (int64_t j = 0; j < d; j++) {
                kS[j] += ki * s[j];
                qS[j] += qi * s[j];
            }
        }
        for (int64_t j = 0; j < d; j++) {
            delta[j] = b * (v[j] - e * kS[j]);
            o[j] = e * qS[j] + kq * delta[j];
        }
        for (int64_t i = 0; i < d; i++) {
            float *s = S + i * d;
            const float ki = k[i];
            for (int64_t j = 0; j < d; j++) s[j] = e * s[j] + ki * delta[j];
        }
    }
}

static int OPS_SUFFIX(gated_delta_net)(const gdn_call *c) {
    const int64_t T = c->T, hk = c->hk, hv = c->hv, d = c->d, K = c->K;
    const int64_t kd = hk * d, vd = hv * d, C = 2 * kd + vd, W = C + vd + 2 * hv;
    void *scratch = malloc(sizeof(float *) * (size_t)K + sizeof(float) * (size_t)(T * C + 2 * T * hv + 2 * d));
    if (!scratch) return -1;
    const float **rows = scratch; /* pointers first: malloc's alignment suits them */
    float *mixed = (float *)(rows + K), *beta = mixed + T * C, *decay = beta + T * hv, *kS = decay + T * hv, *qS = kS + d;

    OPS_SUFFIX(gdn_conv)(c, C, W, rows, mixed);
    const float q_scale = (float)(1.0 / sqrt((double)d));
    for (int64_t t = 0; t < T; t++) {
        float *m = mixed + t * C;
        for (int64_t h = 0; h < hk; h++) {
            OPS_SUFFIX(l2norm_row)(m + h * d, d, c->eps, q_scale);
            OPS_SUFFIX(l2norm_row)(m + kd + h * d, d, c->eps, 1.0f);
        }
        const float *gates = c->proj + t * W + C + vd;
        for (int64_t h = 0; h < hv; h++) {
            beta[t * hv + h] = OPS_SUFFIX(sigmoid)(gates[h]);
            decay[t * hv + h] = OPS_SUFFIX(vexp)(c->a[h] * OPS_SUFFIX(softplus)(gates[hv + h] + c->dt_bias[h]));
        }
    }
    for (int64_t h = 0; h < hv; h++) OPS_SUFFIX(gdn_head)(c, h, mixed, C, beta, decay, kS, qS);

    /* y = rms_norm(o per head) * silu(z), in place over o */
    for (int64_t t = 0; t < T; t++)
        for (int64_t h = 0; h < hv; h++) {
            float *o = c->y + t * vd + h * d;
            const float *z = c->proj + t * W + C + h * d;
            OPS_SUFFIX(rms_row)(o, c->norm_w, o, d, c->eps);
            for (int64_t j = 0; j < d; j++) o[j] *= OPS_SUFFIX(silu)(z[j]);
        }
    free(scratch);
    return 0;
}

/* ---- Gated attention --------------------------------------------------------------------- */

/* NEOX rotary embedding of x's first 2*half dims: pairs (i, i + half). */
static inline void OPS_SUFFIX(rope_row)(float *x, const float *cos_, const float *sin_, int64_t half) {
    for (int64_t i = 0; i < half; i++) {
        const float x1 = x[i], x2 = x[half + i];
        x[i] = x1 * cos_[i] - x2 * sin_[i];
        x[half + i] = x2 * cos_[i] + x1 * sin_[i];
    }
}

/* Causal softmax attention of the r query heads sharing KV head g, for query t at position p:
 * keys/values rows 0..p; y = attn_out * sigmoid(gate). */
static void OPS_SUFFIX(attn_group)(const attn_call *c, int64_t g, int64_t t, const float *qs, float *scores, float *acc) {
    const int64_t hd = c->hd, r = c->n_head / c->n_kv, len = c->position + t + 1;
    const float *keys = c->k_buf + g * c->capacity * hd, *values = c->v_buf + g * c->capacity * hd;
    for (int64_t row = 0; row < len; row++)
        for (int64_t m = 0; m < r; m++) scores[m * len + row] = OPS_SUFFIX(dot)(qs + m * hd, keys + row * hd, hd);
    for (int64_t m = 0; m < r; m++) {
        float *s = scores + m * len;
        float top = s[0], total = 0.0f;
        for (int64_t row = 1; row < len; row++) top = s[row] > top ? s[row] : top;
        for (int64_t row = 0; row < len; row++) {
            s[row] = OPS_SUFFIX(vexp)(s[row] - top);
            total += s[row];
        }
        for (int64_t row = 0; row < len; row++) s[row] /= total;
    }
    memset(acc, 0, sizeof(float) * (size_t)(r * hd));
    for (int64_t row = 0; row < len; row++) {
        const float *v = values + row * hd;
        for (int64_t m = 0; m < r; m++) {
            const float p = scores[m * len + row];
            float *a = acc + m * hd;
            for (int64_t j = 0; j < hd; j++) a[j] += p * v[j];
        }
    }
    for (int64_t m = 0; m < r; m++) {
        const int64_t head = g * r + m;
        const float *gate = c->proj + t * (2 * c->n_head * hd + 2 * c->n_kv * hd) + head * 2 * hd + hd;
        float *y = c->y + t * c->n_head * hd + head * hd;
        for (int64_t j = 0; j < hd; j++) y[j] = acc[m * hd + j] * OPS_SUFFIX(sigmoid)(gate[j]);
    }
}

static int OPS_SUFFIX(gated_attention)(const attn_call *c) {
    const int64_t T = c->T, hd = c->hd, nh = c->n_head, nkv = c->n_kv, half = c->rope_dims / 2;
    const int64_t W = 2 * nh * hd + 2 * nkv * hd, r = nh / nkv, longest = c->position + T;
    float *scratch = malloc(sizeof(float) * (size_t)(T * nh * hd + 2 * half + r * longest + r * hd));
    if (!scratch) return -1;
    float *qs = scratch, *cos_ = qs + T * nh * hd, *sin_ = cos_ + half, *scores = sin_ + half, *acc = scores + r * longest;
    const float scale = (float)(1.0 / sqrt((double)hd));

    for (int64_t t = 0; t < T; t++) {
        const int64_t pos = c->position + t;
        for (int64_t i = 0; i < half; i++) {
            const double angle = (double)pos * c->inv_freq[i];
            cos_[i] = (float)cos(angle);
            sin_[i] = (float)sin(angle);
        }
        const float *p = c->proj + t * W;
        for (int64_t h = 0; h < nh; h++) {
            float *q = qs + (t * nh + h) * hd;
            OPS_SUFFIX(rms_row)(p + h * 2 * hd, c->q_norm, q, hd, c->eps);
            OPS_SUFFIX(rope_row)(q, cos_, sin_, half);
            for (int64_t j = 0; j < hd; j++) q[j] *= scale;
        }
        for (int64_t g = 0; g < nkv; g++) {
            float *k = c->k_buf + (g * c->capacity + pos) * hd;
            OPS_SUFFIX(rms_row)(p + 2 * nh * hd + g * hd, c->k_norm, k, hd, c->eps);
            OPS_SUFFIX(rope_row)(k, cos_, sin_, half);
            memcpy(c->v_buf + (g * c->capacity + pos) * hd, p + 2 * nh * hd + nkv * hd + g * hd, sizeof(float) * (size_t)hd);
        }
    }
    for (int64_t t = 0; t < T; t++)
        for (int64_t g = 0; g < nkv; g++) OPS_SUFFIX(attn_group)(c, g, t, qs + (t * nh + g * r) * hd, scores, acc);
    free(scratch);
    return 0;
}

/* ---- Norms and the FFN gate -------------------------------------------------------------- */

static void OPS_SUFFIX(rms_norm)(const float *x, const float *w, float *out, int64_t rows, int64_t n, float eps) {
    for (int64_t i = 0; i < rows; i++) OPS_SUFFIX(rms_row)(x + i * n, w, out + i * n, n, eps);
}

static void OPS_SUFFIX(add_rms_norm)(float *h, const float *y, const float *w, float *out, int64_t rows, int64_t n, float eps) {
    for (int64_t i = 0; i < rows; i++) {
        float *hi = h + i * n;
        const float *yi = y + i * n;
        for (int64_t j = 0; j < n; j++) hi[j] += yi[j];
        OPS_SUFFIX(rms_row)(hi, w, out + i * n, n, eps);
    }
}

/* out [rows, n] = silu(gu[:, :n]) * gu[:, n:] */
static void OPS_SUFFIX(swiglu)(const float *gu, float *out, int64_t rows, int64_t n) {
    for (int64_t i = 0; i < rows; i++) {
        const float *g = gu + i * 2 * n, *u = g + n;
        for (int64_t j = 0; j < n; j++) out[i * n + j] = OPS_SUFFIX(silu)(g[j]) * u[j];
    }
}

const fused_ops OPS_TABLE = {
    .name = OPS_NAME,
    .gated_delta_net = OPS_SUFFIX(gated_delta_net),
    .gated_attention = OPS_SUFFIX(gated_attention),
    .rms_norm = OPS_SUFFIX(rms_norm),
    .add_rms_norm = OPS_SUFFIX(add_rms_norm),
    .swiglu = OPS_SUFFIX(swiglu),
};
