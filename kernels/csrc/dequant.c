/* Dequantization. Float formulas follow decode.h in float32 without contraction (the build
 * passes -ffp-contract=off), which is what makes them bit-exact with gguf's numpy code. */
#include "decode.h"
#include "dequant.h"

static void dequant_row(int qtype, const uint8_t *row, int k, float *y) {
    switch (qtype) {
    case QT_F32:
        memcpy(y, row, (size_t)k * 4);
        return;
    case QT_F16:
        for (int i = 0; i < k; i++) y[i] = half_to_float(rd_u16(row + 2 * i));
        return;
    case QT_BF16:
        for (int i = 0; i < k; i++) y[i] = bf16_to_float(rd_u16(row + 2 * i));
        return;
    }
    const qtype_info *info = &QTYPES[qtype];
    int_block blk;
    for (int b = 0; b < k / info->block_size; b++) {
        decode_block(qtype, row + (size_t)b * info->type_size, &blk);
        float *yb = y + b * info->block_size;
        for (int g = 0; g < blk.n / blk.group; g++) {
            float scale = blk.d * (float)blk.sc[g], offset = blk.dmin * (float)blk.m[g];
            for (int i = g * blk.group; i < (g + 1) * blk.group; i++)
                yb[i] = (float)blk.q[i] * scale - offset;
        }
    }
}

void dequant_rows(int qtype, const uint8_t *w, size_t row_bytes, int k, int r0, int r1, float *out) {
    for (int r = r0; r < r1; r++)
        dequant_row(qtype, w + (size_t)r * row_bytes, k, out + (size_t)(r - r0) * k);
}
