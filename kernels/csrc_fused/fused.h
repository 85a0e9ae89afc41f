/* Fused per-token ops of a Qwen3.5 decode step (kernels._fused).
 *
 * The math lives in ops_impl.h, compiled once per instruction set (ops_generic.c, ops_avx2.c);
 * module.c checks the Python arguments and calls the variant picked at import time. All arrays
 * are float32, C-contiguous, already checked for shape and overlap by module.c.
 */
#ifndef AGENTD_FUSED_H
#define AGENTD_FUSED_H

#include <stdint.h>

/* One Gated DeltaNet mixer step over T tokens (see gated_delta_net in module.c). */
typedef struct {
    const float *proj;    /* [T, W], W = C + Vd + 2 hv: qkv | z | beta logits | alpha */
    const float *conv_w;  /* [C, K] */
    const float *dt_bias; /* [hv] */
    const float *a;       /* [hv], = -exp(A_log) */
    const float *norm_w;  /* [d] */
    float *conv_state;    /* [K-1, C], previous raw conv inputs, updated */
    float *ssm_state;     /* [hv, d, d], S[h, i (key), j (value)], updated */
    float *y;             /* [T, hv d] */
    int64_t T, hk, hv, d, K;
    float eps;
} gdn_call;

/* One gated full-attention mixer step over T tokens (see gated_attention in module.c). */
typedef struct {
    const float *proj;      /* [T, 2 n_head hd + 2 n_kv hd]: (query | gate) per head | k | v */
    const float *q_norm;    /* [hd] */
    const float *k_norm;    /* [hd] */
    const double *inv_freq; /* [rope_dims / 2] */
    float *k_buf, *v_buf;   /* [n_kv, capacity, hd] */
    float *y;               /* [T, n_head hd] */
    int64_t T, position, capacity, n_head, n_kv, hd, rope_dims;
    float eps;
} attn_call;

typedef struct {
    const char *name;
    int (*gated_delta_net)(const gdn_call *c); /* 0, or -1 when scratch memory ran out */
    int (*gated_attention)(const attn_call *c);
    void (*rms_norm)(const float *x, const float *w, float *out, int64_t rows, int64_t n, float eps);
    void (*add_rms_norm)(float *h, const float *y, const float *w, float *out, int64_t rows, int64_t n, float eps);
    void (*swiglu)(const float *gu, float *out, int64_t rows, int64_t n);
} fused_ops;

extern const fused_ops fused_ops_generic;
extern const fused_ops fused_ops_avx2;

#endif
