#ifndef KERNELS_DEQUANT_H
#define KERNELS_DEQUANT_H

#include "qtypes.h"

/* rows r0..r1-1 of a [*, k] weight of `qtype` -> float32 out [r1 - r0, k], bit-exact with
 * gguf.quants.dequantize */
void dequant_rows(int qtype, const uint8_t *w, size_t row_bytes, int k, int r0, int r1, float *out);

#endif
