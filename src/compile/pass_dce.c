/* Dead-code elimination. A graph from a tape holds every traced node, as eager execution
 * computes them all: values nobody reads afterwards (a forward value only eager mode needed,
 * a gradient or output the step does not return). Compaction can drop whatever no output or
 * update needs; this pass is what lets it, for itself and for every pass after it (a pass
 * that replaces a node leaves the old one dead). With the pass off, nothing is dropped. */
#include "passes.h"

int tg_pass_dce(tg_graph *g, const tg_pass_ctx *ctx)
{
    TG_UNUSED(ctx);
    g->keep_dead = false; /* the pipeline's compaction after this pass does the sweep */
    return TG_OK;
}
