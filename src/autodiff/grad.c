/* The reverse walk. It finds the nodes that lie on a path from the requested inputs to the
 * output, walks them from the output back in tape order, asks each one's rule for its
 * inputs' gradients, sums broadcast gradients back to the input shapes and accumulates
 * gradients that arrive along several paths. Those three jobs are done here and only here;
 * the rules in vjp.c never think about them. */
#include "vjp.h"

#include <stdlib.h>
#include <string.h>

tg_tensor *tg_sum_to_shape(tg_tensor *g, int ndim, const int64_t *shape)
{
    if (!g)
        return NULL;
    if (tg_shape_equal(g->ndim, g->shape, ndim, shape))
        return g;
    int lead = g->ndim - ndim;
    if (lead < 0) {
        char sa[128], sb[128];
        tg_fail(TG_ERR_SHAPE, "grad: a gradient of shape %s cannot be summed to %s",
                tg_shape_str(sa, sizeof sa, g->ndim, g->shape),
                tg_shape_str(sb, sizeof sb, ndim, shape));
        return NULL;
    }
    uint32_t mask = 0;
    for (int i = 0; i < g->ndim; i++)
        if (i < lead || (shape[i - lead] == 1 && g->shape[i] != 1))
            mask |= 1u << i;
    tg_tensor *s = mask ? tg_reduce_mask(TG_OP_SUM, g, mask) : g;
    return tg_reshape(s, ndim, shape);
}

static tg_tensor *accumulate(tg_tensor *sum, tg_tensor *g) { return sum ? tg_add(sum, g) : g; }

int tg_grad(tg_tensor *y, int n, tg_tensor *const *xs, tg_tensor *seed, tg_tensor **grads)
{
    if (y && n < 0)
        return tg_fail(TG_ERR_ARG, "grad: negative input count %d", n);
    if (!y || (n > 0 && (!xs || !grads)))
        return tg_fail(TG_ERR_NULL, "grad: %s", !y ? "output is NULL"
                                                : !xs ? "inputs is NULL" : "grads is NULL");
    if (!tg_node_is_live(y))
        return tg_fail(TG_ERR_TAPE, "grad: the output was dropped by tg_tape_rewind");
    tg_tape *tape = y->tape;
    for (int i = 0; i < n; i++) {
        grads[i] = NULL;
        if (!xs[i])
            return tg_fail(TG_ERR_NULL, "grad: input %d is NULL", i);
        if (!tg_node_is_live(xs[i]))
            return tg_fail(TG_ERR_TAPE, "grad: input %d was dropped by tg_tape_rewind", i);
        if (xs[i]->tape != tape)
            return tg_fail(TG_ERR_TAPE, "grad: input %d is on a different tape from the output",
                           i);
    }
    if (seed) {
        if (!tg_node_is_live(seed))
            return tg_fail(TG_ERR_TAPE, "grad: the seed was dropped by tg_tape_rewind");
        if (seed->tape != tape)
            return tg_fail(TG_ERR_TAPE, "grad: the seed is on a different tape from the output");
        tg_status same = tg_check_same_type("grad", "the seed", seed, "the output", y);
        if (same != TG_OK)
            return same;
    } else if (y->numel != 1) {
        char sa[128];
        return tg_fail(TG_ERR_SHAPE, "grad: without a seed the output must have one element, "
                       "it has shape %s", tg_shape_str(sa, sizeof sa, y->ndim, y->shape));
    }

    size_t count = y->id + 1;
    /* reaches[i]: node i depends on some xs; the walk only visits such nodes. */
    bool *reaches = calloc(count, sizeof *reaches);
    tg_tensor **acc = calloc(count, sizeof *acc);
    if (!reaches || !acc) {
        free(reaches);
        free(acc);
        return tg_fail(TG_ERR_NOMEM, "grad: out of memory");
    }
    for (int i = 0; i < n; i++)
        if (xs[i]->id < count)
            reaches[xs[i]->id] = true;
    size_t lowest = count;
    for (int i = 0; i < n; i++)
        if (xs[i]->id < lowest)
            lowest = xs[i]->id;
    for (size_t id = lowest; id < count; id++) {
        const struct tg_node *node = tg_tape_node(tape, id);
        for (int k = 0; k < node->n_in && !reaches[id]; k++)
            reaches[id] = reaches[node->in[k]->id] && tg_vjp_of(node->op);
    }

    int status = TG_OK;
    if (reaches[y->id]) {
        acc[y->id] = seed ? seed : tg_scalar(tape, y->dtype, 1.0);
        if (acc[y->id] && !seed && y->ndim > 0)
            acc[y->id] = tg_reshape(acc[y->id], y->ndim, y->shape);
        if (!acc[y->id])
            status = tg_last_error_code();
    }
    for (size_t id = count; id-- > lowest && status == TG_OK;) {
        struct tg_node *node = tg_tape_node(tape, id);
        tg_tensor *g = acc[id];
        tg_vjp_fn rule = tg_vjp_of(node->op);
        if (!g || !rule)
            continue;
        bool need[3] = {false, false, false};
        bool any = false;
        for (int k = 0; k < node->n_in; k++)
            any |= need[k] = reaches[node->in[k]->id];
        if (!any)
            continue;
        tg_tensor *in_grads[3] = {NULL, NULL, NULL};
        /* Rules report builder failures through the error state, so each starts from a clean one. */
        tg_clear_error();
        rule(node, g, need, in_grads);
        for (int k = 0; k < node->n_in && tg_last_error_code() == TG_OK; k++) {
            if (!need[k] || !in_grads[k])
                continue;
            struct tg_node *input = node->in[k];
            tg_tensor *gk = tg_sum_to_shape(in_grads[k], input->ndim, input->shape);
            if (gk)
                acc[input->id] = accumulate(acc[input->id], gk);
        }
        if (tg_last_error_code() != TG_OK) {
            status = tg_fail(tg_last_error_code(), "grad: the rule of %s (node %zu) failed: %s",
                             tg_op_name(node->op), id, tg_last_error());
        }
    }
    if (status == TG_OK)
        for (int i = 0; i < n; i++)
            grads[i] = xs[i]->id < count ? acc[xs[i]->id] : NULL;
    free(reaches);
    free(acc);
    return status;
}
