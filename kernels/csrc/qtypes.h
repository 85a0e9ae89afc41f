/* GGML tensor types known to the kernels: ids, block geometry, and the int8 activation formats.
 *
 * A weight row is k / block_size blocks of type_size bytes. Integer-typed weights are multiplied
 * by activations quantized once per call (see act_quant.c): 32-value types use ACT_Q8_32
 * (int8 values, one float scale per 32 and that scale times the block's value sum), the
 * 256-value types use ACT_Q8_256 (int8 values, one float scale per 256, int16 sums per 16).
 */
#ifndef KERNELS_QTYPES_H
#define KERNELS_QTYPES_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* gguf.GGMLQuantizationType ids */
enum qtype {
    QT_F32 = 0, QT_F16 = 1, QT_Q4_0 = 2, QT_Q4_1 = 3, QT_Q5_0 = 6, QT_Q5_1 = 7, QT_Q8_0 = 8,
    QT_Q2_K = 10, QT_Q3_K = 11, QT_Q4_K = 12, QT_Q5_K = 13, QT_Q6_K = 14,
    QT_IQ4_NL = 20, QT_IQ4_XS = 23, QT_BF16 = 30,
    QT_COUNT = 31
};

enum act_kind { ACT_F32, ACT_Q8_32, ACT_Q8_256 };

typedef struct {
    const char *name;
    int block_size;   /* values per block; 0 = type not supported */
    int type_size;    /* bytes per block */
    enum act_kind act;
} qtype_info;

extern const qtype_info QTYPES[QT_COUNT];

/* info for a type id, NULL when the kernels do not handle it */
const qtype_info *qtype_lookup(int qtype);

/* Activation rows [T, k] in the form the kernels for one type read. Row t of each array starts
 * at t * (its per-row length); all arrays are 64-byte aligned and owned by the caller. */
typedef struct {
    enum act_kind kind;
    int k;
    const float *f32;      /* ACT_F32: the float rows themselves, [T, k] */
    const int8_t *qs;      /* [T, k] int8 values */
    const int8_t *qsi;     /* qs interleaved per 256 values (SIMD kernels): 32-byte vector c holds
                              values 32i + 4c .. 32i + 4c + 3 in its 32-bit lane i; a last partial
                              256 stays in order */
    const float *d;        /* [T, k / block] scales */
    const float *s;        /* [T, k / 32] d * sum of each 32 values (d: their block's scale) */
    const int16_t *bsums;  /* ACT_Q8_256: [T, k / 16] sums of 16 values */
    const int32_t *sums;   /* ACT_Q8_32: [T, k / 32] integer sums of the block's values */
} acts;

/* One weight type's kernel: out[(t - t0) * ldo + (r - r0)] = dot(weight row r, activation
 * row t) for rows r0..r1-1 and activations t0..t0+nt-1 (nt <= MAX_NT); w is the whole matrix. Each row's arithmetic must not depend
 * on nt, t0 or the other rows (batch invariance). */
typedef void (*dot_kernel)(const uint8_t *w, size_t row_bytes, int r0, int r1, const acts *a,
                           int t0, int nt, float *out, size_t ldo);

typedef struct {
    const char *name;
    dot_kernel dot[QT_COUNT];
} kernel_set;

extern const kernel_set KERNELS_SCALAR;
#if defined(__x86_64__) || defined(__i386__)
extern const kernel_set KERNELS_AVX2;
extern const kernel_set KERNELS_AVX512VNNI;
#endif

#define MAX_NT 8  /* activation rows one kernel call handles */

/* ---- little-endian field readers and exact half/bfloat conversions (portable) */

static inline uint16_t rd_u16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline uint32_t rd_u32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }

static inline float bits_to_float(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* IEEE half -> float, exact for every input (subnormals, inf, NaN payloads kept) */
static inline float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    if (exp == 0x1f) return bits_to_float(sign | 0x7f800000 | (man << 13));
    if (exp == 0) {
        if (man == 0) return bits_to_float(sign);
        int shift = 0;  /* subnormal: normalise the mantissa */
        while (!(man & 0x400)) { man <<= 1; shift++; }
        return bits_to_float(sign | ((uint32_t)(113 - shift) << 23) | ((man & 0x3ff) << 13));
    }
    return bits_to_float(sign | ((exp + 112) << 23) | (man << 13));
}

static inline float rd_half(const uint8_t *p) { return half_to_float(rd_u16(p)); }
static inline float bf16_to_float(uint16_t b) { return bits_to_float((uint32_t)b << 16); }

/* IQ4_NL / IQ4_XS non-uniform 4-bit grid */
extern const int8_t IQ4_GRID[16];

#endif
