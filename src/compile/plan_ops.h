/* The plan ops' entry points (see plan_ops.def for what each op computes). */
#ifndef TG_COMPILE_PLAN_OPS_H
#define TG_COMPILE_PLAN_OPS_H

#include "graph.h"

enum { TG_CONV_TRANSPOSED_FLIPPED = 1 };

#define TG_PLAN_OP(e, name, kernel, prepare, describe, release)                                  \
    void kernel(const tg_ir_node *n, void *out, const void *const *in, void *scratch);          \
    int prepare(const tg_graph *g, tg_ir_node *n);                                              \
    void describe(const tg_ir_node *n, char *buf, size_t size);                                 \
    void release(void *payload);
#include "plan_ops.def"
#undef TG_PLAN_OP

#endif
