/* Channel sums in the convolution: a FUSED kernel that sums a forward convolution's output
 * over everything but its channels (batch norm's mean: sum(y, (0, 2, 3))) makes the CONV
 * write partial sums as it goes (TG_CONV_CHANNEL_SUMS, compile/plan_ops.h), band by band
 * while the band is in cache (kernels/channel_sums.h), and becomes a reduction of those
 * partial sums: [N*OH][OC], a few hundred kilobytes where y is megabytes (the reference
 * model's first layer writes 12.8 MB a step, which the mean read again from memory).
 *
 * The CONV becomes a joined node whose output is flat: y's values, then the partial sums.
 * Its FUSED readers read y's block where they did (it starts the output); any other reader
 * reads it through a reshape of the joined output's first elements, a view with no copy
 * (as compile/fuse_ties.c does for a max and its tie counts). The sum is formed in another
 * order (per band, then over the bands), so the mean differs from the unoptimized graph's by
 * rounding; each band's sums are one task's, so it does not depend on the thread count.
 *
 * Runs after fusion (it needs the FUSED reduction) and only on f32 convolutions: f64 plans
 * are the gradient checks', which want the plain sums. */
#include "fuse_internal.h"
#include "passes.h"
#include "plan_ops.h"
#include "../kernels/fused.h"

#include <string.h>

/* Whether p sums node `conv`'s output (input slot `slot` of the FUSED node), read whole and
 * in order, over every axis but the channels: the iteration space is [N, OC, ...] (the rest
 * OH*OW), axis 1 alone kept, the result one load at offset 0 with row-major strides. */
static bool sums_channels(const tg_fused_program *p, const tg_ir_node *conv, int slot)
{
    if (p->reduce_op != TG_OP_SUM || p->n_more != 0 || p->stores || p->count_ties ||
        p->n_instrs != 0 || p->result != 0 || p->n_loads != 1 || p->load[0].input != slot ||
        p->load[0].offset != 0 || p->ndim < 3 || p->shape[0] != conv->shape[0] ||
        p->shape[1] != conv->shape[1] || p->reduce_mask != (((1u << p->ndim) - 1u) & ~2u))
        return false;
    int64_t stride = 1, points = 1;
    for (int k = p->ndim - 1; k >= 0; k--) {
        if (p->shape[k] > 1 && p->load[0].stride[k] != stride)
            return false;
        stride *= p->shape[k];
        points *= p->shape[k];
    }
    return points == conv->numel;
}

/* The FUSED node that sums CONV c's channels, or -1. */
static int channel_sum_of(const tg_graph *g, int c)
{
    for (int u = c + 1; u < g->n; u++) {
        const tg_ir_node *n = &g->nodes[u];
        if (n->op != TG_PLAN_OP_FUSED || n->n_in != 1 || n->in[0] != c || !n->payload)
            continue;
        if (sums_channels(n->payload, &g->nodes[c], 0))
            return u;
    }
    return -1;
}

/* A CONV whose kernel can form the sums: forward, f32, [N, OC, OH, OW], not yet joined. */
static bool can_sum(const tg_graph *g, int c)
{
    const tg_ir_node *n = &g->nodes[c];
    return n->op == TG_PLAN_OP_CONV && n->dtype == TG_F32 && n->ndim == 4 &&
           !(n->attr[4] & TG_CONV_CHANNEL_SUMS) && !tg_fuse_is_root(g, c);
}

/* The reduction of the partial sums [N*OH][OC] (after y's `values` elements of input 0) over
 * their rows, shaped as sum node s was. */
static int sum_of_partials(tg_graph *g, int joined, int s, int64_t rows, int64_t oc,
                           int64_t values)
{
    tg_fused_program *p = tg_fused_program_new();
    if (!p)
        return -1;
    p->ndim = 2;
    p->shape[0] = rows;
    p->shape[1] = oc;
    p->reduce_op = TG_OP_SUM;
    p->reduce_mask = 1;
    p->n_loads = 1;
    p->load[0] = (tg_fused_load){.input = 0, .dtype = TG_F32, .offset = values,
                                 .stride = {oc, 1}};
    p->result = 0;
    const tg_ir_node *old = &g->nodes[s];
    tg_ir_node x = {.op = TG_PLAN_OP_FUSED, .dtype = TG_F32, .ndim = old->ndim, .n_in = 1,
                    .in = {joined}, .label = old->label, .tape_id = SIZE_MAX, .payload = p};
    memcpy(x.shape, old->shape, sizeof x.shape);
    int added = tg_graph_add(g, &x);
    if (added < 0)
        tg_fused_release(p);
    return added;
}

/* CONV c writes its channel sums; s, which summed c's output, now sums the partial sums. */
static int join(tg_graph *g, int c, int s)
{
    const tg_ir_node *conv = &g->nodes[c];
    int64_t n = conv->shape[0], oc = conv->shape[1], oh = conv->shape[2];
    int64_t values = conv->numel;
    tg_ir_node x = *conv;
    x.ndim = 1;
    memset(x.shape, 0, sizeof x.shape);
    x.shape[0] = values + n * oh * oc;
    x.attr[4] |= TG_CONV_CHANNEL_SUMS;
    memcpy(&x.attr[11], conv->shape, 4 * sizeof *conv->shape);
    x.payload = NULL;
    x.inplace_inputs = 0;
    x.tape_id = SIZE_MAX;
    int joined = tg_graph_add(g, &x);
    if (joined < 0)
        return tg_fail(TG_ERR_NOMEM, "conv_sums: out of memory");
    int sums = sum_of_partials(g, joined, s, n * oh, oc, values);
    if (sums < 0)
        return tg_fail(TG_ERR_NOMEM, "conv_sums: out of memory");
    tg_graph_replace(g, s, sums);
    int view = -1;
    for (int u = 0; u < g->n; u++) {
        for (int k = 0; k < g->nodes[u].n_in; k++) {
            tg_ir_node *r = &g->nodes[u];
            if (r->in[k] != c || u == joined || u == view)
                continue;
            /* y is block 0: loads unchanged; a kernel that wrote over y may write over it,
             * its output y's size (compile/memplan.c) */
            if (r->op == TG_PLAN_OP_FUSED) {
                r->in[k] = joined;
                continue;
            }
            if (view < 0) { /* y's values, shaped as the CONV was: a view of the first ones */
                const tg_ir_node *y = &g->nodes[c];
                tg_ir_node v = {.op = TG_OP_RESHAPE, .dtype = TG_F32, .ndim = 4, .n_in = 1,
                                .in = {joined}, .label = y->label, .tape_id = SIZE_MAX};
                memcpy(v.shape, y->shape, sizeof v.shape);
                if ((view = tg_graph_add(g, &v)) < 0)
                    return tg_fail(TG_ERR_NOMEM, "conv_sums: out of memory");
            }
            g->nodes[u].in[k] = view; /* adding the view may have moved the array */
        }
    }
    return TG_OK;
}

int tg_pass_conv_sums(tg_graph *g, const tg_pass_ctx *ctx)
{
    if (ctx->layer_forms) /* an exported graph has no use for it */
        return TG_OK;
    int status = tg_graph_compact(g);
    if (status != TG_OK || g->keep_dead) /* dead nodes would count as readers */
        return status;
    int n = g->n; /* joined nodes, views and reductions are appended: not candidates */
    for (int c = 0; c < n && status == TG_OK; c++) {
        if (!can_sum(g, c))
            continue;
        int s = channel_sum_of(g, c);
        if (s >= 0)
            status = join(g, c, s);
    }
    return status == TG_OK ? tg_graph_compact(g) : status;
}
