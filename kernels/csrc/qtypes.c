#include "qtypes.h"

const qtype_info QTYPES[QT_COUNT] = {
    [QT_F32] = {"F32", 1, 4, ACT_F32},
    [QT_F16] = {"F16", 1, 2, ACT_F32},
    [QT_BF16] = {"BF16", 1, 2, ACT_F32},
    [QT_Q8_0] = {"Q8_0", 32, 34, ACT_Q8_32},
    [QT_Q4_0] = {"Q4_0", 32, 18, ACT_Q8_32},
    [QT_Q4_1] = {"Q4_1", 32, 20, ACT_Q8_32},
    [QT_Q5_0] = {"Q5_0", 32, 22, ACT_Q8_32},
    [QT_Q5_1] = {"Q5_1", 32, 24, ACT_Q8_32},
    [QT_IQ4_NL] = {"IQ4_NL", 32, 18, ACT_Q8_32},
    [QT_Q2_K] = {"Q2_K", 256, 84, ACT_Q8_256},
    [QT_Q3_K] = {"Q3_K", 256, 110, ACT_Q8_256},
    [QT_Q4_K] = {"Q4_K", 256, 144, ACT_Q8_256},
    [QT_Q5_K] = {"Q5_K", 256, 176, ACT_Q8_256},
    [QT_Q6_K] = {"Q6_K", 256, 210, ACT_Q8_256},
    [QT_IQ4_XS] = {"IQ4_XS", 256, 136, ACT_Q8_256},
};

const qtype_info *qtype_lookup(int qtype) {
    if (qtype < 0 || qtype >= QT_COUNT || QTYPES[qtype].block_size == 0) return NULL;
    return &QTYPES[qtype];
}
