/* fold_scale: not written yet; the pass leaves the graph as it is. */
#include "passes.h"

int tg_pass_fold_scale(tg_graph *g, const tg_pass_ctx *ctx)
{
    TG_UNUSED(g);
    TG_UNUSED(ctx);
    return TG_OK;
}
