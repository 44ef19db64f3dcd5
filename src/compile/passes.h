/* The pass pipeline: the table of passes (passes.def), their switches and their dumps. */
#ifndef TG_COMPILE_PASSES_H
#define TG_COMPILE_PASSES_H

#include "graph.h"

typedef enum {
#define TG_PASS(name, doc) TG_PASS_ID_##name,
#include "passes.def"
#undef TG_PASS
    TG_PASS_COUNT,
    TG_PASS_ID_memplan = TG_PASS_COUNT, /* the memory plan, switchable like a pass */
    TG_PASS_ID_native,                  /* fused kernels as machine code (native.h), too */
    TG_PASS_ID_prologue,                /* kernels run inside a weight gradient (prologue.h) */
} tg_pass_id;

/* What a pass may want to know about the plan it works for. */
typedef struct {
    bool training;    /* informational: the graph holds updates */
    bool layer_forms; /* the graph is read as layers (ONNX export), not run: rewrites that
                         only help kernels and hide a layer's form stay off */
    bool native;      /* fused kernels will be compiled (native.h) unless no compiler runs:
                         not switched off */
} tg_pass_ctx;

#define TG_PASS(name, doc) int tg_pass_##name(tg_graph *g, const tg_pass_ctx *ctx);
#include "passes.def"
#undef TG_PASS

#endif
