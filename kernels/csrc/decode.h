/* Integer form of one quantized block, shared by the scalar dot products and dequantization.
 *
 * Every integer type decodes to: value i = q[i] * (d * sc[g]) - (dmin * m[g]), g = i / group.
 * Evaluated in that order in float32 it reproduces gguf.quants.dequantize bit for bit (a type
 * with an additive min, Q4_1/Q5_1, stores dmin = -min and m = 1).
 */
#ifndef KERNELS_DECODE_H
#define KERNELS_DECODE_H

#include "qtypes.h"

typedef struct {
    int8_t q[256];
    int16_t sc[16];
    int16_t m[16];
    float d, dmin;
    int n, group;  /* values in the block, values per scale group */
} int_block;

/* decode block `b` of integer type `qtype` (not F32/F16/BF16) */
void decode_block(int qtype, const uint8_t *b, int_block *out);

#endif
