/* Prologues (prologue.h): which elementwise kernels run inside a weight gradient, and
 * running one over a chunk of images. */
#include "prologue.h"
#include "plan_ops.h"
#include "../kernels/fused.h"

#include <stdint.h>

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

/* Whether node j alone reads node i, which is no output and no update's value. */
static bool only_reader(const tg_graph *g, int i, int j)
{
    for (int r = 0; r < g->n; r++)
        for (int k = 0; k < g->nodes[r].n_in; k++)
            if (g->nodes[r].in[k] == i && r != j)
                return false;
    for (int k = 0; k < g->n_outputs; k++)
        if (g->outputs[k] == i)
            return false;
    for (int k = 0; k < g->n_updates; k++)
        if (g->update_value[k] == i)
            return false;
    return true;
}

int tg_prologue_plan(const tg_graph *g, int *run_at, bool *chunked)
{
    int count = 0;
    for (int i = 0; i < g->n; i++) {
        run_at[i] = i;
        chunked[i] = false;
    }
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
        chunked[i] = only_reader(g, i, j);
        count++;
    }
    return count;
}

size_t tg_prologue_image_bytes(const tg_ir_node *x)
{
    return (size_t)(x->numel / x->shape[0]) * (x->dtype == TG_F64 ? sizeof(double)
                                                                   : sizeof(float));
}

const void *tg_prologue_run(const tg_prologue *pr, int64_t first, int64_t count, char *mine)
{
    const tg_ir_node *x = pr->node;
    const tg_fused_program *p = x->payload;
    int64_t batch = x->shape[0], units = p->native_units;
    size_t image = tg_prologue_image_bytes(x);
    char *at = pr->out ? (char *)pr->out + (size_t)first * image : mine + pr->chunk_at;
    /* The kernel writes image i at its output + i image: an output `first` images before
     * the chunk puts image `first` at its start. Computed as an integer: that address lies
     * outside any object, and nothing is written there. */
    void *out = pr->out ? pr->out : (void *)((uintptr_t)at - (size_t)first * image);
    tg_fused_run_units(x, out, pr->in, first * units / batch, (first + count) * units / batch);
    return at;
}
