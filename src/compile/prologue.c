/* Prologues (prologue.h): which elementwise kernels run inside a weight gradient, and
 * running one over a chunk of images. */
#include "prologue.h"
#include "plan_ops.h"
#include "../kernels/fused.h"

/* A native elementwise kernel's units walk its output in order (kernels/fused_emit.c), so
 * with a multiple of the batch as units, image i is units i U / N .. (i + 1) U / N - 1. */
static bool runs_by_images(const tg_ir_node *x)
{
    if (x->op != TG_PLAN_OP_FUSED || !x->payload || x->ndim < 1 || x->shape[0] < 1)
        return false;
    const tg_fused_program *p = x->payload;
    return p->native && !p->native_combine && p->reduce_op == TG_OP_LEAF && !p->stores &&
           p->native_units % x->shape[0] == 0;
}

/* Whether node i is read before node j by any node but j (views included). */
static bool read_before(const tg_graph *g, int i, int j)
{
    for (int r = i + 1; r < j; r++)
        for (int k = 0; k < g->nodes[r].n_in; k++)
            if (g->nodes[r].in[k] == i)
                return true;
    return false;
}

int tg_prologue_plan(const tg_graph *g, int *run_at)
{
    int count = 0;
    for (int i = 0; i < g->n; i++)
        run_at[i] = i;
    for (int j = 0; j < g->n; j++) {
        const tg_ir_node *w = &g->nodes[j];
        if (w->op != TG_PLAN_OP_CONV_WGRAD || w->n_in != 2)
            continue;
        int i = w->in[0]; /* the gradient at the convolution's output, [N, OC, OH, OW] */
        const tg_ir_node *x = &g->nodes[i];
        if (!runs_by_images(x) || run_at[i] != i || w->in[1] == i ||
            x->shape[0] != g->nodes[w->in[1]].shape[0] || read_before(g, i, j))
            continue;
        run_at[i] = j;
        count++;
    }
    return count;
}

void tg_prologue_run(const tg_prologue *pr, int64_t first, int64_t count)
{
    const tg_ir_node *x = pr->node;
    const tg_fused_program *p = x->payload;
    int64_t batch = x->shape[0], units = p->native_units;
    tg_fused_run_units(x, pr->out, pr->in, first * units / batch,
                       (first + count) * units / batch);
}
