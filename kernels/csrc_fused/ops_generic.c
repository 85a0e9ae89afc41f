/* The portable variant: baseline x86-64 (SSE2) or whatever the compiler targets by default. */
#define OPS_SUFFIX(name) name##_generic
#define OPS_TABLE fused_ops_generic
#define OPS_NAME "generic"
#include "ops_impl.h"
