/* Activation rows -> the int8 forms the integer kernels read (see qtypes.h). */
#ifndef KERNELS_ACT_QUANT_H
#define KERNELS_ACT_QUANT_H

#include "qtypes.h"

/* Buffers for T rows of k values of `kind`; NULL on allocation failure. Free with acts_free. */
acts *acts_alloc(enum act_kind kind, int T, int k);
void acts_free(acts *a);

/* quantize rows t0..t1-1 of x [T, k] into a (one row's result depends only on that row) */
void acts_quantize(acts *a, const float *x, int t0, int t1);

#endif
