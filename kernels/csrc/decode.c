/* Block layouts -> int_block. The layouts are described at the top of kernels/quant.py. */
#include "decode.h"

const int8_t IQ4_GRID[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

static void small_block(int_block *o, float d, float dmin) {
    o->n = o->group = 32;
    o->d = d;
    o->dmin = dmin;
    o->sc[0] = 1;
    o->m[0] = 1;  /* dmin * 1 is dmin exactly: +0 for types without a min */
}

static void super_block(int_block *o, float d, float dmin) {
    o->n = 256;
    o->group = 16;
    o->d = d;
    o->dmin = dmin;
}

/* low/high nibbles of 16 bytes -> 32 codes (lo first), plus `add` */
static void nibbles32(const uint8_t *qs, int8_t *q, int add) {
    for (int l = 0; l < 16; l++) {
        q[l] = (int8_t)((qs[l] & 15) + add);
        q[l + 16] = (int8_t)((qs[l] >> 4) + add);
    }
}

/* five-bit codes: nibbles plus bit i of qh as bit 4 of value i */
static void fivebit32(uint32_t qh, const uint8_t *qs, int8_t *q, int add) {
    for (int l = 0; l < 16; l++) {
        q[l] = (int8_t)(((qs[l] & 15) | (((qh >> l) & 1) << 4)) + add);
        q[l + 16] = (int8_t)(((qs[l] >> 4) | (((qh >> (l + 16)) & 1) << 4)) + add);
    }
}

/* Q4_K/Q5_K 12-byte packing of eight 6-bit (scale, min) pairs; each covers two 16-groups */
static void k_scales(const uint8_t *s, int_block *o) {
    for (int j = 0; j < 8; j++) {
        int sc, m;
        if (j < 4) {
            sc = s[j] & 63;
            m = s[j + 4] & 63;
        } else {
            sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
            m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
        }
        o->sc[2 * j] = o->sc[2 * j + 1] = (int16_t)sc;
        o->m[2 * j] = o->m[2 * j + 1] = (int16_t)m;
    }
}

void decode_block(int qtype, const uint8_t *b, int_block *o) {
    switch (qtype) {
    case QT_Q8_0:
        small_block(o, rd_half(b), 0.0f);
        memcpy(o->q, b + 2, 32);
        break;
    case QT_Q4_0:
        small_block(o, rd_half(b), 0.0f);
        nibbles32(b + 2, o->q, -8);
        break;
    case QT_Q4_1:
        small_block(o, rd_half(b), -rd_half(b + 2));
        nibbles32(b + 4, o->q, 0);
        break;
    case QT_Q5_0:
        small_block(o, rd_half(b), 0.0f);
        fivebit32(rd_u32(b + 2), b + 6, o->q, -16);
        break;
    case QT_Q5_1:
        small_block(o, rd_half(b), -rd_half(b + 2));
        fivebit32(rd_u32(b + 4), b + 8, o->q, 0);
        break;
    case QT_IQ4_NL:
        small_block(o, rd_half(b), 0.0f);
        nibbles32(b + 2, o->q, 0);
        for (int i = 0; i < 32; i++) o->q[i] = IQ4_GRID[(int)o->q[i]];
        break;
    case QT_Q2_K:  /* scales 16 | qs 64 | d | dmin */
        super_block(o, rd_half(b + 80), rd_half(b + 82));
        for (int g = 0; g < 16; g++) {
            o->sc[g] = b[g] & 15;
            o->m[g] = b[g] >> 4;
        }
        for (int h = 0; h < 2; h++)
            for (int s = 0; s < 4; s++)
                for (int l = 0; l < 32; l++)
                    o->q[h * 128 + s * 32 + l] = (int8_t)((b[16 + h * 32 + l] >> (2 * s)) & 3);
        break;
    case QT_Q3_K: {  /* hmask 32 | qs 64 | scales 12 | d */
        super_block(o, rd_half(b + 108), 0.0f);
        const uint8_t *s = b + 96;
        for (int g = 0; g < 16; g++) {
            int low = g < 8 ? s[g] & 15 : s[g - 8] >> 4;
            int high = (s[8 + g % 4] >> (2 * (g / 4))) & 3;
            o->sc[g] = (int16_t)((low | (high << 4)) - 32);
            o->m[g] = 0;
        }
        for (int h = 0; h < 2; h++)
            for (int s2 = 0; s2 < 4; s2++)
                for (int l = 0; l < 32; l++) {
                    int low2 = (b[32 + h * 32 + l] >> (2 * s2)) & 3;
                    int keep = (b[l] >> (4 * h + s2)) & 1;
                    o->q[h * 128 + s2 * 32 + l] = (int8_t)(low2 - (keep ? 0 : 4));
                }
        break;
    }
    case QT_Q4_K:  /* d | dmin | scales 12 | qs 128 */
        super_block(o, rd_half(b), rd_half(b + 2));
        k_scales(b + 4, o);
        for (int c = 0; c < 4; c++)
            for (int l = 0; l < 32; l++) {
                o->q[64 * c + l] = (int8_t)(b[16 + 32 * c + l] & 15);
                o->q[64 * c + 32 + l] = (int8_t)(b[16 + 32 * c + l] >> 4);
            }
        break;
    case QT_Q5_K:  /* d | dmin | scales 12 | qh 32 | qs 128 */
        super_block(o, rd_half(b), rd_half(b + 2));
        k_scales(b + 4, o);
        for (int c = 0; c < 4; c++)
            for (int l = 0; l < 32; l++) {
                int qh = b[16 + l];
                o->q[64 * c + l] = (int8_t)((b[48 + 32 * c + l] & 15) | (((qh >> (2 * c)) & 1) << 4));
                o->q[64 * c + 32 + l] = (int8_t)((b[48 + 32 * c + l] >> 4) | (((qh >> (2 * c + 1)) & 1) << 4));
            }
        break;
    case QT_Q6_K:  /* ql 128 | qh 64 | scales 16 x int8 | d */
        super_block(o, rd_half(b + 208), 0.0f);
        for (int g = 0; g < 16; g++) {
            o->sc[g] = (int8_t)b[192 + g];
            o->m[g] = 0;
        }
        for (int h = 0; h < 2; h++)
            for (int l = 0; l < 32; l++) {
                const uint8_t *ql = b + 64 * h, qh = b[128 + 32 * h + l];
                int8_t *q = o->q + 128 * h;
                q[l] = (int8_t)(((ql[l] & 15) | ((qh & 3) << 4)) - 32);
                q[l + 32] = (int8_t)(((ql[l + 32] & 15) | (((qh >> 2) & 3) << 4)) - 32);
                q[l + 64] = (int8_t)(((ql[l] >> 4) | (((qh >> 4) & 3) << 4)) - 32);
                q[l + 96] = (int8_t)(((ql[l + 32] >> 4) | (((qh >> 6) & 3) << 4)) - 32);
            }
        break;
    case QT_IQ4_XS: {  /* d | scales_h u16 | scales_l 4 | qs 128 */
        super_block(o, rd_half(b), 0.0f);
        uint16_t sh = rd_u16(b + 2);
        for (int j = 0; j < 8; j++) {
            int ls = ((b[4 + j / 2] >> (4 * (j % 2))) & 15) | (((sh >> (2 * j)) & 3) << 4);
            o->sc[2 * j] = o->sc[2 * j + 1] = (int16_t)(ls - 32);
            o->m[2 * j] = o->m[2 * j + 1] = 0;
            nibbles32(b + 8 + 16 * j, o->q + 32 * j, 0);
            for (int i = 0; i < 32; i++) o->q[32 * j + i] = IQ4_GRID[(int)o->q[32 * j + i]];
        }
        break;
    }
    default:
        memset(o, 0, sizeof *o);
    }
}
