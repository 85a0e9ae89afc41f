/* The AVX2 variant, used only when the CPU reports avx2 and fma (module.c checks at import). */
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#pragma GCC target("avx2,fma")
#define OPS_SUFFIX(name) name##_avx2
#define OPS_TABLE fused_ops_avx2
#define OPS_NAME "avx2"
#include "ops_impl.h"
#else
#include "fused.h"
const fused_ops fused_ops_avx2 = {0}; /* never selected off x86 */
#endif
